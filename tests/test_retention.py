"""Retention (issue 12). Finding 3, bounded rows: a disabled subscription gets no messages (a replay
once it is back on sends what it missed), and maintenance prunes finished messages of every kind
(delivered, dead, skipped, superseded) with their attempts, and the events nothing refers to any
more. Finding 10, data that grows forever: pushes go after a window (failed ones after a longer
one), a booking's state some days after its stay, and the space goes back to the file system."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.maintenance import maintain
from gateway.models import (
    AttemptRecord,
    DeliveryRecord,
    EventName,
    RoomMap,
    RoomMapUpdate,
    Subscription,
)
from gateway.store import SQLiteStore, connect, utcnow
from gateway.store.interface import ClaimRoom, Retention, Settlement
from gateway.store.sqlite.migrations import migrations
from tests.receivers import availability_event, booking_event, emit
from tests.test_store_shared import delivered

ROOM = ClaimRoom(total=1000, per_subscription=1000)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "retention.db")
    await store.open()
    yield store
    await store.close()


def subscription(id: str, event: EventName = "booking_update", active: bool = True) -> Subscription:
    now = utcnow()
    return Subscription(
        id=id,
        tenant="t",
        event=event,
        url="https://example.com/hook",
        secret="whsec_abc",
        products=["*"],
        active=active,
        created_at=now,
        updated_at=now,
    )


def count(store: SQLiteStore, sql: str, *params: Any) -> int:
    conn = sqlite3.connect(store.path)
    try:
        return int(conn.execute(sql, params).fetchone()[0])
    finally:
        conn.close()


def states(store: SQLiteStore, subscription_id: str) -> list[str]:
    conn = sqlite3.connect(store.path)
    try:
        rows = conn.execute(
            "select state from deliveries where subscription_id = ? order by seq",
            [subscription_id],
        ).fetchall()
    finally:
        conn.close()
    return [row[0] for row in rows]


async def settle(store: SQLiteStore, record: DeliveryRecord, state: str, status: int) -> None:
    attempt = AttemptRecord(
        delivery_id=record.id,
        subscription_id=record.subscription_id,
        attempt=1,
        attempted_at=time.time(),
        outcome="delivered" if state == "delivered" else "dead",
        status=status,
    )
    assert await store.settle_deliveries([Settlement(record, attempt, state)]) == [True]  # type: ignore[arg-type]


async def claim(store: SQLiteStore) -> list[DeliveryRecord]:
    return await store.claim_deliveries(ROOM, 60, ordering_max_wait=3600)


# -- disabled subscriptions ------------------------------------------------------------------


async def test_a_disabled_subscription_gets_no_rows(store: SQLiteStore) -> None:
    await store.insert_subscription(subscription("on"))
    await store.insert_subscription(subscription("off", active=False))
    for n in range(30):
        assert await emit(store, [booking_event(f"test:b{n}")]) == 1
    assert count(store, "select count(*) from deliveries where subscription_id = 'on'") == 30
    assert count(store, "select count(*) from deliveries where subscription_id = 'off'") == 0


async def test_replay_sends_what_a_disabled_subscription_missed_in_order(
    store: SQLiteStore,
) -> None:
    await store.insert_subscription(subscription("s", active=False))
    await store.insert_subscription(subscription("a", "availability_update", active=False))
    since = time.time() - 1
    # While off: three updates of booking b, one of c, three availabilities of one day.
    await emit(store, [booking_event("test:b", n) for n in range(3)] + [booking_event("test:c")])
    for n in range(3):
        await emit(store, [availability_event("test:room|rate|2030-01-01", n)])
    assert count(store, "select count(*) from deliveries") == 0

    for id in ("s", "a"):
        found = await store.get_subscription(None, id)
        assert found is not None
        assert await store.update_subscription(found.model_copy(update={"active": True}))
    # Back on: a later update of c is sent before anyone replays.
    await emit(store, [booking_event("test:c", 1)])

    assert await store.replay_deliveries("s", since) == 3  # b 0, 1, 2; not c 0 (c 1 is newer)
    assert await store.replay_deliveries("a", since) == 1  # only the day's last availability
    sent: dict[str, list[Any]] = {}
    while claimed := await claim(store):  # claims keep each subject's order, as sending does
        for record in claimed:
            data = record.data
            what = data["booking"]["notes"] if "booking" in data else data["availability"]
            sent.setdefault(record.order_key.split("|", 1)[1], []).append(
                what if isinstance(what, str) else what["vacancies"]
            )
            await settle(store, record, "delivered", 200)
    assert sent == {
        "test:b": ["update 0", "update 1", "update 2"],
        "test:c": ["update 1"],
        "test:room|rate|2030-01-01": [2],
    }


async def settle_all(store: SQLiteStore, records: list[DeliveryRecord]) -> None:
    settlements = [delivered(record) for record in records]
    assert await store.settle_deliveries(settlements) == [True] * len(records)


async def test_a_replay_larger_than_its_chunks_sends_everything_in_order(
    store: SQLiteStore,
) -> None:
    from gateway.store.sqlite.deliveries import REPLAY_CHUNK

    subjects = REPLAY_CHUNK // 2 + 50  # each subject's three updates span the chunks
    await store.insert_subscription(subscription("off", active=False))
    since = time.time() - 1
    for n in range(3):
        await emit(store, [booking_event(f"test:b{k}", n) for k in range(subjects)])
    found = await store.get_subscription(None, "off")
    assert found is not None
    assert await store.update_subscription(found.model_copy(update={"active": True}))

    assert await store.replay_deliveries("off", since) == 3 * subjects
    sent: dict[str, list[str]] = {}
    while claimed := await claim(store):
        for record in claimed:
            subject = record.order_key.split("|", 1)[1]
            sent.setdefault(subject, []).append(record.data["booking"]["notes"])
        await settle_all(store, claimed)
    assert sent == {f"test:b{k}": ["update 0", "update 1", "update 2"] for k in range(subjects)}

    # Once delivered, all of them again (more than a chunk of requeued messages), ids kept.
    before = {row[0] for row in store._wdb.execute("select id from deliveries")}
    assert await store.replay_deliveries("off", since) == 3 * subjects
    assert states(store, "off") == ["pending"] * (3 * subjects)
    assert {row[0] for row in store._wdb.execute("select id from deliveries")} == before


async def test_a_replay_sends_no_missed_update_older_than_one_queued_while_it_ran(
    store: SQLiteStore,
) -> None:
    """The replay reads what to send on a reader, then writes in chunks: an update of a booking
    queued in between must not be followed by the older one the replay found missing."""
    from functools import partial

    from gateway.store.sqlite.deliveries import _replay_plan

    await store.insert_subscription(subscription("s", active=False))
    since = time.time() - 1
    await emit(store, [booking_event("test:b", 0), booking_event("test:c", 0)])
    found = await store.get_subscription(None, "s")
    assert found is not None
    assert await store.update_subscription(found.model_copy(update={"active": True}))

    plan = await store._read(partial(_replay_plan, subscription_id="s", since=since))
    assert [subject for _, subject in plan.missed] == ["test:b", "test:c"]
    await emit(store, [booking_event("test:b", 1)])  # queued while the replay runs
    queued = await store._write(
        partial(store._queue_missed, "s", plan.missed, plan.last_seq, set())
    )
    assert queued == 1  # c's update; b's older one would undo the newer
    notes = [
        (record.order_key.split("|", 1)[1], record.data["booking"]["notes"])
        for record in await claim(store)
    ]
    assert sorted(notes) == [("test:b", "update 1"), ("test:c", "update 0")]


# -- pruning finished messages ---------------------------------------------------------------


async def test_retention_prunes_finished_messages_of_every_kind(store: SQLiteStore) -> None:
    await store.insert_subscription(subscription("s"))
    await store.insert_subscription(subscription("a", "availability_update"))
    before = time.time() - 1
    await emit(store, [booking_event(f"test:b{n}") for n in range(4)])
    day = "test:room|rate|2030-01-01"
    await emit(store, [availability_event(day, 0)])
    await emit(store, [availability_event(day, 1)])  # supersedes the first, still waiting
    claimed = await claim(store)
    records = sorted((r for r in claimed if r.subscription_id == "s"), key=lambda r: r.order_key)
    await settle(store, records[0], "delivered", 200)
    await settle(store, records[1], "dead", 400)
    await store.skip_delivery(records[2], "subscription disabled or deleted")
    await store.release_deliveries([records[3]])  # back to pending: still waiting
    [availability] = [r for r in claimed if r.subscription_id == "a"]
    await store.release_deliveries([availability])
    assert sorted(states(store, "s")) == ["dead", "delivered", "pending", "skipped"]
    assert states(store, "a") == ["superseded", "pending"]
    events_before = count(store, "select count(*) from events")

    assert await store.apply_retention(Retention(messages_before=before)) == {}
    assert count(store, "select count(*) from deliveries") == 6

    removed = await store.apply_retention(Retention(messages_before=time.time() + 1))
    assert removed == {"deliveries": 4, "attempts": 2, "events": 4}
    assert states(store, "s") == ["pending"]
    assert states(store, "a") == ["pending"]
    assert count(store, "select count(*) from attempts") == 0
    # The events of the two waiting messages stay; the others went with their messages.
    assert count(store, "select count(*) from events") == events_before - 4 == 2
    assert await store.apply_retention(Retention(messages_before=time.time() + 1)) == {}


async def test_a_deleted_subscription_goes_with_its_last_message(store: SQLiteStore) -> None:
    await store.insert_subscription(subscription("gone"))
    await emit(store, [booking_event("test:b")])
    [record] = await claim(store)
    await settle(store, record, "delivered", 200)
    assert await store.delete_subscription("t", "gone") is not None
    assert count(store, "select count(*) from subscriptions") == 1  # its history names it

    removed = await store.apply_retention(Retention(messages_before=time.time() + 1))
    assert removed == {"deliveries": 1, "attempts": 1, "events": 1, "subscriptions": 1}
    assert count(store, "select count(*) from subscriptions") == 0


# -- data that grows forever (issue 12, finding 10) ------------------------------------------


async def stored_push(store: SQLiteStore, n: int, state: str = "processed", size: int = 10) -> str:
    push, _ = await store.insert_push(
        source="test",
        kind="k",
        payload={"n": n, "guest": "x" * size},
        dedupe_key=None,
        order_key=None,
        lease_seconds=60 if state == "processed" else None,
        state="failed" if state == "failed" else "accepted",
        error="broken" if state == "failed" else None,
    )
    if state == "processed":
        assert push.lease_token is not None
        assert await store.complete_push(push.id, push.lease_token, []) == 0
    return push.id


async def test_pushes_go_after_their_windows_failed_ones_later(store: SQLiteStore) -> None:
    processed = await stored_push(store, 1)
    failed = await stored_push(store, 2, "failed")
    replayed = await stored_push(store, 3, "failed")
    waiting = await stored_push(store, 4, "accepted")
    assert await store.replay_failed_pushes([replayed]) == [replayed]
    now = time.time()

    kept_failed = Retention(pushes_before=now + 1, failed_pushes_before=now - 3600)
    assert await store.apply_retention(kept_failed) == {"pushes": 1}
    assert await store.get_push(processed) is None
    assert await store.get_push(failed) is not None

    everything = Retention(pushes_before=now + 1, failed_pushes_before=now + 1)
    assert await store.apply_retention(everything) == {"pushes": 1}
    assert await store.get_push(failed) is None
    # Waiting to be processed (a replayed one too): never deleted.
    assert await store.get_push(replayed) is not None
    assert await store.get_push(waiting) is not None


def stay(subject: str, ends: str, n: int = 0) -> Any:
    event = booking_event(subject, n)
    event.data["booking"]["availability"]["localDateTimeEnd"] = f"{ends}T00:00:00+00:00"
    return event


async def test_state_goes_some_days_after_the_stay(store: SQLiteStore) -> None:
    push, _ = await store.insert_push(
        source="test", kind="k", payload={}, dedupe_key=None, order_key=None, lease_seconds=60
    )
    assert push.lease_token is not None
    events = [
        stay("test:past", "2020-01-05"),
        stay("test:past:0", "2020-01-05"),  # a room of a booking that lists several
        stay("test:future", "2099-01-05"),
        availability_event("test:room|rate|2020-01-04"),
        availability_event("test:room|rate|2099-01-04"),
    ]
    maps = [
        RoomMapUpdate(source="test", booking=booking, rooms=RoomMap(), generation=0)
        for booking in ("past", "future")
    ]
    await store.complete_push(push.id, push.lease_token, events, room_maps=maps)

    removed = await store.apply_retention(Retention(stays_before="2025-01-01"))
    assert removed == {"booking_state": 2, "room_maps": 1, "availability_state": 1}
    assert await store.get_room_map("test", "past") is None
    assert await store.get_room_map("test", "future") is not None
    assert count(store, "select count(*) from booking_state where key = 'test:future'") == 1
    assert count(store, "select count(*) from availability_state") == 1
    assert await store.apply_retention(Retention(stays_before="2025-01-01")) == {}


async def test_state_of_an_old_stay_updated_lately_is_kept(store: SQLiteStore) -> None:
    """A PMS re-sending a booking whose stay ended long ago: its state stays until it has also
    been untouched for the window, so a repeat of the same version is still recognised."""
    push, _ = await store.insert_push(
        source="test", kind="k", payload={}, dedupe_key=None, order_key=None, lease_seconds=60
    )
    assert push.lease_token is not None
    await store.complete_push(push.id, push.lease_token, [stay("test:past", "2020-01-05")])

    window = Retention(stays_before="2025-01-01", state_untouched_before=time.time() - 86400)
    assert "booking_state" not in await store.apply_retention(window)
    assert count(store, "select count(*) from booking_state where key = 'test:past'") == 1

    later = Retention(stays_before="2025-01-01", state_untouched_before=time.time() + 1)
    assert (await store.apply_retention(later))["booking_state"] == 1


async def test_a_maintenance_round_applies_the_config_and_gives_the_space_back(
    store: SQLiteStore, make_config: Any
) -> None:
    config = make_config(retention={"pushes_days": 2, "failed_pushes_days": 10})
    for n in range(100):
        await stored_push(store, n, size=20_000)  # two 4 KiB pages and more each
    assert "pushes" not in await maintain(store, config, now=time.time() + 86400)  # too soon
    conn = sqlite3.connect(store.path)
    try:
        [pages] = conn.execute("PRAGMA page_count").fetchone()
    finally:
        conn.close()

    removed = await maintain(store, config, now=time.time() + 3 * 86400)
    assert removed["pushes"] == 100
    assert removed["pages"] > 400
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
        assert conn.execute("PRAGMA page_count").fetchone()[0] <= pages - removed["pages"]
    finally:
        conn.close()


async def test_a_database_from_before_m007_is_turned_to_incremental_vacuum(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    db = connect(path)
    db.enable_wal()
    migrations.apply(db, stop_before="m007_prune_finished_messages")
    db.execute(
        "insert into pushes (id, source, kind, dedupe_key, state, next_attempt_at, received_at)"
        " values ('psh_old', 'test', 'k', 'd', 'failed', 0, 0)"
    )
    db.conn.commit()
    assert db.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    db.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.get_push("psh_old") is not None
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL
    finally:
        conn.close()
