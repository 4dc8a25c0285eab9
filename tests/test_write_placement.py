"""Where the SQLite store's writes run: small batches on the event loop's own thread, and on the
writer thread whatever may wait or take long, without the loop ever stalling for either."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store import SQLiteStore
from gateway.store.errors import StorageUnavailable
from tests.receivers import availability_event, emit
from tests.test_storage_faults import locked


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    # Longer than the test's own timeout: a loop that waited for a lock itself would never get to
    # release it, and the test would time out instead of passing slowly.
    store = SQLiteStore(tmp_path / "gateway.db", busy_timeout=70)
    await store.open()
    yield store
    await store.close()


async def insert(store: SQLiteStore, n: int) -> str:
    record, new = await store.insert_push(
        source="test", kind="k", payload={"n": n}, dedupe_key=f"key-{n}", order_key=None
    )
    assert new
    return record.id


async def test_a_small_write_runs_on_the_loop_and_a_background_one_on_the_writer_thread(
    store: SQLiteStore,
) -> None:
    def where() -> str:
        return threading.current_thread().name

    assert await store._write(where) == threading.current_thread().name
    assert await store._write(where, background=True) == "store-writer_0"
    # A small write queued behind a background one shares its batch, on the writer thread.
    both = await asyncio.gather(store._write(where, background=True), store._write(where))
    assert list(both) == ["store-writer_0", "store-writer_0"]
    # And back on the loop once the writer thread has found nothing more to take (it may still
    # take a write made the moment it answered, before it looked at the queue again).
    here = threading.current_thread().name
    for _ in range(100):
        if await store._write(where) == here:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("writes stayed on the writer thread")


async def test_a_write_behind_another_process_lock_waits_on_the_writer_thread_not_the_loop(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """On the loop the lock fails at once, and the batch goes to the writer thread to wait for
    it: the loop goes on meanwhile (the lock is released from it), and the write then succeeds."""
    first = await insert(store, 0)
    async with locked(tmp_path / "gateway.db"):
        waiting = asyncio.create_task(insert(store, 1))
        behind = asyncio.create_task(insert(store, 2))  # queued while the first one waits
        ticks = 0
        for _ in range(20):  # the loop runs: a blocked loop would not come back before the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20
        assert not waiting.done() and not behind.done()  # neither failed nor went past the lock
    ids = await asyncio.gather(waiting, behind)
    stored = {p.id for p in await store.list_pushes(limit=10)}
    assert stored == {first, *ids}
    assert await insert(store, 3)  # the next write is back on the loop, lock or not


async def test_a_lock_held_past_the_busy_timeout_still_fails_the_write(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gateway.db", busy_timeout=0.3)
    await store.open()
    try:
        async with locked(tmp_path / "gateway.db"):
            with pytest.raises(StorageUnavailable, match="locked"):
                await insert(store, 1)
        assert await insert(store, 2)  # the lock gone, writes work again
    finally:
        await store.close()


async def test_writes_from_two_event_loops_each_answered_on_their_own(store: SQLiteStore) -> None:
    """A write from another thread's loop is committed by whichever flush runs next, and its
    caller is answered on its own loop."""

    def other_loop() -> list[str]:
        async def many() -> list[str]:
            return list(await asyncio.gather(*(insert(store, n) for n in range(100, 150))))

        return asyncio.run(many())

    here = asyncio.gather(*(insert(store, n) for n in range(50)))
    there = asyncio.to_thread(other_loop)
    mine, theirs = await asyncio.gather(here, there)
    stored = {p.id for p in await store.list_pushes(limit=200)}
    assert stored == set(mine) | set(theirs)
    assert len(stored) == 100


async def test_a_write_to_a_closed_or_unopened_store_fails_instead_of_hanging(
    tmp_path: Path,
) -> None:
    unopened = SQLiteStore(tmp_path / "never.db")
    with pytest.raises(RuntimeError, match="not open"):
        await asyncio.wait_for(insert(unopened, 1), 10)
    closed = SQLiteStore(tmp_path / "closed.db")
    await closed.open()
    await closed.close()
    for background in (False, True):
        with pytest.raises(RuntimeError, match="not open"):
            await asyncio.wait_for(closed._write(lambda: None, background=background), 10)


# -- reads on the write connection ---------------------------------------------------------------

DAY = "test:room-1|rate-1|2030-01-01"


def finished_at_once(coro: Any) -> Any:
    """The coroutine's result if it ends without waiting for anything, else AssertionError."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("it waited")


async def test_a_read_on_the_write_connection_answers_at_once_when_no_write_is_pending(
    store: SQLiteStore,
) -> None:
    await emit(store, [availability_event(DAY, 3)])

    known = finished_at_once(store.known_availability([DAY]))

    assert known[DAY]["vacancies"] == 3
    assert not store._flushing  # no batch was started for it


async def test_a_read_on_the_write_connection_waits_for_the_writes_made_before_it(
    store: SQLiteStore,
) -> None:
    """It reads what a read queued behind them reads: a push's translation must see the
    availability an earlier push is storing, or merge its change into a stale day."""
    await emit(store, [availability_event(DAY, 3)])
    push, _ = await store.insert_push(
        source="test", kind="events", payload={}, dedupe_key=None, order_key=None, lease_seconds=60
    )
    assert push.lease_token is not None
    storing = asyncio.ensure_future(
        store.complete_push(push.id, push.lease_token, [availability_event(DAY, 7)])
    )
    await asyncio.sleep(0)
    assert store._flushing  # the write is queued, not yet committed

    known = await store.known_availability([DAY])

    assert known[DAY]["vacancies"] == 7
    assert await storing == 0


async def test_a_read_on_the_write_connection_goes_on_while_another_process_writes(
    store: SQLiteStore, tmp_path: Path
) -> None:
    await emit(store, [availability_event(DAY, 3)])
    async with locked(tmp_path / "gateway.db"):
        known = finished_at_once(store.known_availability([DAY]))
    assert known[DAY]["vacancies"] == 3
