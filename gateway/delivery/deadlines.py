"""Deadlines for outbound attempts, without a timer per attempt.

Under uvloop every ``call_at`` opens and closes a libuv timer handle; aiohttp's ``total`` timeout
arms one per request and enters a timer context around every read and write, and
``asyncio.timeout`` arms one too. Measured on the delivery path, either costs about a tenth of a
whole POST. Instead an attempt registers its task's deadline here, and one timer, ticking every
``TICK`` seconds while any attempt is registered, cancels the tasks past their deadline. The
attempt turns that cancellation into a timeout (``expired``), as ``asyncio.timeout`` does: a
cancellation from anyone else (a stopping worker) is still a cancellation.
"""

from __future__ import annotations

import asyncio
from typing import Any

TICK = 0.05  # seconds: how late past its deadline an attempt may be cancelled


class Deadlines:
    def __init__(self, tick: float = TICK) -> None:
        self.tick = tick
        self._watched: dict[asyncio.Task[Any], float] = {}  # task -> deadline (loop time)
        self._expired: set[asyncio.Task[Any]] = set()  # cancelled here, not yet told
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, task: asyncio.Task[Any], deadline: float) -> int:
        """Cancel ``task`` once the loop's time passes ``deadline``, unless ``unwatch`` comes
        first. Returns the task's cancellation count now, for ``expired``."""
        self._watched[task] = deadline
        if self._timer is None:
            self._loop = task.get_loop()
            self._timer = self._loop.call_later(self.tick, self._sweep)
        return task.cancelling()

    def extend(self, task: asyncio.Task[Any], deadline: float) -> None:
        """A new deadline for a watched task (none once it has been cancelled)."""
        if task in self._watched:
            self._watched[task] = deadline

    def unwatch(self, task: asyncio.Task[Any]) -> None:
        self._watched.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[Any], cancelling: int) -> bool:
        """Whether the ``CancelledError`` ``task`` is handling came from its deadline alone
        (then it is uncancelled and the caller goes on as after a timeout); ``cancelling`` is
        what ``watch`` returned."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() <= cancelling

    def __len__(self) -> int:
        return len(self._watched)

    def _sweep(self) -> None:
        self._timer = None
        loop = self._loop
        if not self._watched or loop is None:
            return
        now = loop.time()
        overdue = [task for task, deadline in self._watched.items() if deadline <= now]
        for task in overdue:
            del self._watched[task]
            if not task.done():
                self._expired.add(task)
                task.cancel()
        if self._watched:
            self._timer = loop.call_later(self.tick, self._sweep)
