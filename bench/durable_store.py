"""The least a durable ingest can do: one row per push in SQLite, committed before the answer.

Used by the bare server's ``--durable`` mode to price durability on its own. It does what the
gateway's store does in its cheapest form: WAL with ``synchronous = NORMAL`` (the gateway's
default durability), a single writer thread, and group commit (every row waiting goes into one
transaction; each caller is answered once it is committed). No validation, no leases, no
processing: whatever the gateway spends beyond this is its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

Row = tuple[str, str, str, bytes]


class DurableLog:
    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("pragma journal_mode = wal")
        self._conn.execute("pragma synchronous = normal")
        self._conn.execute(
            "create table if not exists pushes (seq integer primary key, id text unique,"
            " source text, dedupe_key text, body blob, unique (source, dedupe_key))"
        )
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="durable-writer")
        self._lock = threading.Lock()
        self._queue: list[tuple[Row, asyncio.Future[None]]] = []
        self._flushing = False

    async def append(self, row: Row) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._queue.append((row, future))
            start, self._flushing = not self._flushing, True
        if start:
            loop.run_in_executor(self._writer, self._flush, loop)
        await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._flushing = False
                    return
            self._conn.execute("begin immediate")
            self._conn.executemany(
                "insert or ignore into pushes (id, source, dedupe_key, body) values (?, ?, ?, ?)",
                [row for row, _ in batch],
            )
            self._conn.execute("commit")
            loop.call_soon_threadsafe(_settle, [future for _, future in batch])

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._conn.close()


def _settle(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
