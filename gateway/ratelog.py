"""A fault that repeats is logged once per interval, with how often it happened meanwhile.

A storage fault fails every request while it lasts; logging each one would bury the log (and
fill the disk that may be the fault). A fault is logged at once, then at most once per
``interval`` with the number of failures in between, and its end once. A fault that comes and
goes faster than the interval still gives one line per interval (plus one saying it ended).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Episode:
    since: float
    failures: int = 0
    reported: bool = False


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._episodes: dict[str, _Episode] = {}
        self._last_line: dict[str, float] = {}
        self._unreported: dict[str, int] = {}
        self._lock = threading.Lock()  # called from the store's writer and reader threads

    def fault(self, key: str, message: str) -> bool:
        """One failure under ``key``: logged unless a line about ``key`` was logged within the
        interval (then counted for the next line). True when logged."""
        with self._lock:
            return self._fault(key, message)

    def _fault(self, key: str, message: str) -> bool:
        now = self.clock()
        episode = self._episodes.setdefault(key, _Episode(since=now))
        episode.failures += 1
        last = self._last_line.get(key)
        if last is not None and now - last < self.interval:
            self._unreported[key] = self._unreported.get(key, 0) + 1
            return False
        missed = self._unreported.pop(key, 0)
        if missed:
            message += f" ({missed} more failures since the last report)"
        self.logger.error("%s", message)
        self._last_line[key] = now
        episode.reported = True
        return True

    def failing(self, key: str) -> bool:
        return key in self._episodes

    def resolved(self, key: str, message: str) -> None:
        """The fault under ``key`` is over: said once, if its start was reported."""
        with self._lock:
            episode = self._episodes.pop(key, None)
        if episode is not None and episode.reported:
            failures = f"{episode.failures} failure{'s' if episode.failures > 1 else ''}"
            self.logger.warning(
                "%s (after %s over %.0f s)", message, failures, self.clock() - episode.since
            )
