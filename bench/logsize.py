"""The largest size a gateway's SQLite write-ahead log reaches during a phase.

The store restarts its log past ``WAL_LIMIT_BYTES`` (docs/data.md); a log that grows with every
push, as it once did under writes that never pause, shows here before it fills a disk. The
``-wal`` file is stat'ed every ``every`` seconds while the gateway runs (a closed database
removes it, so the peak is read while it lives).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path


class LogSize:
    def __init__(self, db_path: Path, every: float = 0.25) -> None:
        self.path = Path(f"{db_path}-wal")
        self.every = every
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.every)

    def _sample(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.peak = max(self.peak, os.stat(self.path).st_size)

    async def stop(self) -> int:
        """Stop watching; the peak in bytes (0 when there never was a log, as on PostgreSQL)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._sample()
        return self.peak
