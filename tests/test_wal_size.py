"""The SQLite store's write-ahead log stays bounded, however long writes go on without a pause.

A passive checkpoint copies the log back into the database without blocking anyone, but the log is
only written from its start again once a checkpoint has copied all of it before the next write
begins: under writes that never pause, that moment never came, and the log grew by everything
written (29 MB/s at full ingest, measured). The store restarts the log once it passes its limit
and cuts the file back to it, without stalling writes behind a reader that keeps the log in use.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.store import SQLiteStore, connect
from gateway.store.sqlite import base

LIMIT = 256 * 1024
PAYLOAD = {"pad": "x" * 3000}  # about a Beds24 booking's size


def wal_size(store: SQLiteStore) -> int:
    return store.wal_path.stat().st_size if store.wal_path.exists() else 0


async def write(store: SQLiteStore, n: int) -> float:
    """One push stored alone (its own transaction); how long it took, in seconds."""
    started = time.monotonic()
    await store.insert_push(
        source="test", kind="k", payload={**PAYLOAD, "n": n}, dedupe_key=f"key-{n}", order_key=None
    )
    return time.monotonic() - started


async def test_the_log_restarts_under_writes_that_never_pause(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gateway.db", wal_limit=LIMIT, checkpoint_every=0.01)
    await store.open()
    try:
        sizes = []
        # About 190 MB of log written back to back (each push alone writes a dozen pages).
        for n in range(4000):
            await write(store, n)
            sizes.append(wal_size(store))
        # Cut back while the writes went on: the log was written from its start again.
        shrank = sum(1 for before, after in itertools.pairwise(sizes) if after < before)
        assert shrank >= 2, f"the log only grew, to {max(sizes):,} bytes"
        # And once the checkpointer catches up (it first copies what piled up), the next write
        # leaves the file at the limit.
        n, deadline = 4000, time.monotonic() + 20
        while wal_size(store) > LIMIT + 64 * 1024 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            await write(store, n)
            n += 1
        assert wal_size(store) <= LIMIT + 64 * 1024
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "gateway.db")
    try:
        assert db.execute("select count(*) from pushes").fetchone()[0] == n
    finally:
        db.close()


async def test_a_reader_holding_the_log_delays_its_restart_not_the_writes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gateway.db", wal_limit=LIMIT, checkpoint_every=0.01)
    await store.open()
    reader = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    try:
        await write(store, -1)
        # A long read (an export, say) keeps its snapshot, and so the log, in use.
        reader.execute("begin")
        reader.execute("select count(*) from pushes").fetchone()
        slowest = max([await write(store, n) for n in range(1500)])
        held = wal_size(store)
        assert held > 4 * LIMIT  # the log could not restart meanwhile
        assert slowest < 1.0, f"a write waited {slowest:.2f} s behind the checkpoint"
        reader.execute("commit")
        # Once the reader is done, the log restarts and is cut back to the limit (a passive
        # checkpoint first copies what piled up, which takes a while).
        deadline = time.monotonic() + 20
        n = 1500
        while wal_size(store) > 2 * LIMIT and time.monotonic() < deadline:
            await write(store, n)
            n += 1
            await asyncio.sleep(0.005)
        assert wal_size(store) <= 2 * LIMIT
    finally:
        reader.close()
        await store.close()


async def test_a_write_waiting_for_the_restart_runs_on_the_loop_once_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The restart waits for readers longer, so the write surely comes while it waits.
    monkeypatch.setattr(base, "RESTART_WAIT", 0.5)
    # The checkpointer is slowed right down; this test runs its restart itself.
    store = SQLiteStore(tmp_path / "gateway.db", checkpoint_every=3600)
    await store.open()
    reader = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    checkpointer = connect(tmp_path / "gateway.db")
    try:
        await write(store, 0)
        reader.execute("begin")
        reader.execute("select count(*) from pushes").fetchone()
        await write(store, 1)  # the reader's snapshot keeps the log in use: the restart waits
        loop = asyncio.get_running_loop()
        restart = loop.run_in_executor(None, store._restart_log, checkpointer)
        while not store._restarting:
            await asyncio.sleep(0.001)

        def where() -> str:
            return threading.current_thread().name

        started = time.monotonic()
        ran_on = await store._write(where)
        waited = time.monotonic() - started
        assert await restart is False  # the reader kept the log: it gives up, a later round retries
        assert ran_on == threading.current_thread().name  # the loop's, not the writer thread's
        assert 0.2 < waited < 5.0
    finally:
        reader.close()
        checkpointer.close()
        await store.close()
