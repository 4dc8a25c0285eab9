"""The SQLite store: migrations, WAL, and subscription round trips on a real file."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.models import NewEvent, PushRecord, Subscription
from gateway.pipeline.versions import version_micros
from gateway.samples import sample_data
from gateway.store import SQLiteStore, connect, utcnow
from gateway.store.sqlite.deliveries import CLAIM_FOR_SUBSCRIPTION, NEXT_DUE, SUBSCRIPTIONS_QUEUED
from gateway.store.sqlite.migrations import migrations
from gateway.store.sqlite.pushes import CLAIM_PUSHES


def sample_subscription(id: str = "s1", tenant: str = "t") -> Subscription:
    now = utcnow()
    return Subscription(
        id=id,
        tenant=tenant,
        event="booking_update",
        url="https://u:p@example.com/x",
        headers={"X": "1"},
        secret="whsec_abc",
        products=["p1"],
        created_at=now,
        updated_at=now,
    )


async def test_migrations_on_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("select name from sqlite_master where type='table'")}
    assert "subscriptions" in tables
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    applied = [row[0] for row in conn.execute("select name from _sqlite_migrations order by id")]
    assert applied == [m.name for m in migrations._migrations]
    conn.close()


async def test_migrations_are_idempotent_and_keep_data(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    store = SQLiteStore(path)
    await store.open()
    await store.insert_subscription(sample_subscription())
    await store.close()

    db = connect(path)
    assert migrations.pending(db) == []
    migrations.apply(db)  # a second apply on a migrated database changes nothing
    count = db.execute("select count(*) from _sqlite_migrations").fetchone()[0]
    assert count == len(migrations._migrations)
    db.close()

    reopened = SQLiteStore(path)
    await reopened.open()
    got = await reopened.get_subscription("t", "s1")
    await reopened.close()
    assert got is not None
    assert got.url == "https://u:p@example.com/x"
    assert got.products == ["p1"]


async def test_subscription_round_trip_and_tenant_scope(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "rt.db")
    await store.open()
    try:
        original = sample_subscription()
        await store.insert_subscription(original)
        await store.insert_subscription(sample_subscription("s2", "other"))
        got = await store.get_subscription("t", "s1")
        assert got == original
        assert await store.get_subscription("other", "s1") is None
        assert await store.get_subscription(None, "s1") == original
        assert [s.id for s in await store.list_subscriptions("t")] == ["s1"]

        await store.update_subscription(original.model_copy(update={"active": False}))
        updated = await store.get_subscription("t", "s1")
        assert updated is not None and updated.active is False

        # A change made to a stale read is refused, so it can't undo what happened meanwhile.
        later = updated.model_copy(update={"active": True, "updated_at": utcnow()})
        assert await store.update_subscription(later, expected_updated_at=updated.updated_at)
        stale = updated.model_copy(update={"retry_on_error": False, "updated_at": utcnow()})
        assert not await store.update_subscription(stale, expected_updated_at=updated.updated_at)
        current = await store.get_subscription("t", "s1")
        assert current is not None and current.active is True and current.retry_on_error

        assert await store.delete_subscription("other", "s1") is None
        deleted = await store.delete_subscription("t", "s1")
        assert deleted is not None and deleted.id == "s1"
        assert await store.get_subscription("t", "s1") is None
        assert await store.delete_subscription("t", "s1") is None
    finally:
        await store.close()


async def emit_booking_version(
    store: SQLiteStore, db_path: Path, version: int | None, note: str
) -> int:
    """Process one push carrying a booking_update of ``version``; the events stored so far."""
    booking = sample_data("booking_update")["booking"]
    await store.insert_push(source="s", kind="k", payload={}, dedupe_key=None, order_key=None)
    [push] = await store.claim_pushes(1, 60)
    assert push.lease_token is not None
    event = NewEvent(
        event="booking_update",
        subject="s:b1",
        product_id=booking["productId"],
        option_id=booking["optionId"],
        data={"booking": {**booking, "notes": note}},
        state_key="s:b1",
        revision=note,
        version=version,
    )
    await store.complete_push(push.id, push.lease_token, [event])
    db = connect(db_path)
    try:
        return int(db.execute("select count(*) from events where subject = 's:b1'").fetchone()[0])
    finally:
        db.close()


def micros(text: str) -> int:
    return version_micros(datetime.fromisoformat(text))


async def test_older_booking_version_arriving_late_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "versions.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await emit_booking_version(store, path, micros("2026-02-15T10:00:00Z"), "1") == 1
        assert await emit_booking_version(store, path, micros("2026-02-15T12:00:00Z"), "2") == 2
        # Older than the last one sent.
        assert await emit_booking_version(store, path, micros("2026-02-15T11:00:00Z"), "3") == 2
        # A fraction of a second later is newer ("…:00.5Z" sorts before "…:00Z" as text).
        assert await emit_booking_version(store, path, micros("2026-02-15T12:00:00.5Z"), "4") == 3
        assert await emit_booking_version(store, path, micros("2026-02-15T12:00:00Z"), "5") == 3
    finally:
        await store.close()


async def test_versions_stored_as_text_by_an_earlier_release_stay_readable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "legacy.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await emit_booking_version(store, path, None, "1") == 1
        # What an earlier release kept: the PMS's timestamp as text (here a fractional one).
        db = connect(path)
        db.execute("update booking_state set version = '2026-02-15T12:00:00.5Z'")
        db.conn.commit()
        db.close()
        assert await emit_booking_version(store, path, micros("2026-02-15T12:00:00Z"), "2") == 1
        assert await emit_booking_version(store, path, micros("2026-02-15T12:00:00.6Z"), "3") == 2
        # Unreadable text never makes an update stale.
        db = connect(path)
        db.execute("update booking_state set version = 'not a time'")
        db.conn.commit()
        db.close()
        assert await emit_booking_version(store, path, micros("2000-01-01T00:00:00Z"), "4") == 3
    finally:
        await store.close()


async def test_group_commit_isolates_a_failing_write(tmp_path: Path) -> None:
    import asyncio
    import sqlite3 as sqlite

    store = SQLiteStore(tmp_path / "group.db")
    await store.open()
    try:
        await store.insert_subscription(sample_subscription("taken"))
        # Queued together, these share one transaction; the duplicate must fail alone.
        results = await asyncio.gather(
            store.insert_subscription(sample_subscription("a")),
            store.insert_subscription(sample_subscription("taken")),
            store.insert_subscription(sample_subscription("b")),
            return_exceptions=True,
        )
        assert results[0] is True and results[2] is True
        assert isinstance(results[1], sqlite.IntegrityError)
        ids = sorted(s.id for s in await store.list_subscriptions("t"))
        assert ids == ["a", "b", "taken"]
    finally:
        await store.close()


async def test_push_leased_at_insert_unless_an_earlier_one_for_the_booking_waits(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "lease.db")
    await store.open()

    async def push(payload: Any, dedupe_key: str | None, order_key: str) -> tuple[PushRecord, bool]:
        return await store.insert_push(
            source="s",
            kind="k",
            payload=payload,
            dedupe_key=dedupe_key,
            order_key=order_key,
            lease_seconds=60,
        )

    try:
        first, _ = await push({"n": 1}, "d1", "b1")
        assert first.lease_token is not None and first.attempts == 1
        # A leased push is not claimed again while its lease runs.
        assert await store.claim_pushes(10, 60) == []

        second, created = await push({"n": 2}, None, "b1")
        assert created and second.lease_token is None, "the booking's earlier push is unfinished"

        other, _ = await push({"n": 3}, None, "b2")
        assert other.lease_token is not None, "another booking is not held up"

        repeat, created = await push({}, "d1", "b1")
        assert not created and repeat.id == first.id and repeat.lease_token == first.lease_token

        assert await store.complete_push(first.id, first.lease_token, []) == 0
        assert [p.id for p in await store.claim_pushes(10, 60)] == [second.id]
    finally:
        await store.close()


async def query_plan(path: Path, sql: str, params: dict[str, Any]) -> list[str]:
    """The steps of EXPLAIN QUERY PLAN for ``sql`` on a freshly migrated database."""
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    try:
        return [row[3] for row in conn.execute("explain query plan " + sql, params)]
    finally:
        conn.close()


async def test_push_claims_read_the_due_index_in_order_without_sorting_the_backlog(
    tmp_path: Path,
) -> None:
    select = CLAIM_PUSHES[CLAIM_PUSHES.index("select p.seq") : CLAIM_PUSHES.rindex(")")]
    plan = await query_plan(tmp_path / "plan.db", select, {"now": time.time(), "limit": 8})
    # A sort would read every due push of the backlog on every claim.
    assert not any("TEMP B-TREE" in step for step in plan), plan
    assert any("pushes_due" in step for step in plan), plan


async def test_delivery_claims_seek_each_subscription_instead_of_scanning_the_backlog(
    tmp_path: Path,
) -> None:
    params = {"now": time.time(), "token": "t", "expires": 0.0, "subscription": "s"}
    params |= {"max_wait": 3600.0, "limit": 8}
    plans = {
        name: await query_plan(tmp_path / "plan.db", sql, params)
        for name, sql in (
            ("queued", SUBSCRIPTIONS_QUEUED),
            ("claim", CLAIM_FOR_SUBSCRIPTION),
            ("next due", NEXT_DUE),
        )
    }
    # A replay or a slow receiver queues thousands of one subscription's messages in a row; a
    # scan over them on every claim made peak delivery fall by half.
    for name, plan in plans.items():
        assert not any(step.startswith("SCAN deliveries") for step in plan), (name, plan)
        assert not any("TEMP B-TREE" in step for step in plan), (name, plan)
        assert any("deliveries_due_by_subscription" in step for step in plan), (name, plan)


async def test_a_database_from_before_m004_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SQLiteStore(path)
    await store.open()
    await store.insert_subscription(sample_subscription())
    await store.close()
    # Turn it back into what the previous release left: no replayed_after, m004 not applied.
    conn = sqlite3.connect(path)
    conn.execute("alter table deliveries drop column replayed_after")
    conn.execute("delete from _sqlite_migrations where name = 'm004_replay_keeps_attempt_numbers'")
    conn.commit()
    conn.close()

    upgraded = SQLiteStore(path)
    await upgraded.open()
    await upgraded.close()
    conn = sqlite3.connect(path)
    try:
        columns = {row[1] for row in conn.execute("pragma table_info(deliveries)")}
        count = conn.execute("select count(*) from subscriptions").fetchone()[0]
    finally:
        conn.close()
    assert "replayed_after" in columns
    assert count == 1
