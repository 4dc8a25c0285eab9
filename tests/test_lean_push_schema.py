"""Issue 13's schema: a booking's lookup fields kept as plain columns beside it (m009), and push
indexes that hold only the pushes still waiting (m010), so a push stored already processed costs
the writer fewer index entries. The upgrade of a database written by the schema before them, and
the plans of the statements that read through the new indexes."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.models import BookingFilter
from gateway.samples import sample_data
from gateway.store import SQLiteStore, connect
from gateway.store.interface import Retention, Store
from gateway.store.lookups import booking_lookups
from gateway.store.sqlite import operations, pushes, reads, retention
from gateway.store.sqlite.migrations import migrations
from tests.receivers import booking_event

COLUMNS = "m009_booking_state_columns"


def booking(uuid: str, supplier: str | None, reseller: str | None, ends: str) -> dict[str, Any]:
    found = sample_data("booking_update")["booking"]
    found.update(uuid=uuid, id=uuid, supplierReference=supplier, resellerReference=reseller)
    found["availability"]["localDateTimeEnd"] = f"{ends}T11:00:00+01:00"
    return dict(found)


OLD_BOOKINGS = {
    # key: (booking, updated_at)
    "test:past": (booking("u-past", "S-past", "R-past", "2020-01-05"), 100.0),
    "test:future": (booking("u-future", "S-future", None, "2099-01-05"), 200.0),
    "test:room:0": (booking("u-room", "S-room", "R-room", "2099-02-01"), 300.0),
}


OLD_PUSHES = [
    # id, state, order_key, coalesce_key
    ("psh_first", "accepted", "test:b", None),
    ("psh_second", "accepted", "test:b", None),
    ("psh_coalescing", "accepted", None, "ari:room"),
    ("psh_failed", "failed", None, None),
    ("psh_done", "processed", "test:c", None),
]
# As the release before m009 wrote them: lookups only in the booking's JSON.
INSERT_BOOKING = (
    "insert into booking_state (key, revision, version, booking, updated_at)"
    " values ({}, 'r', null, {}, {})"
)
INSERT_PUSH = (
    "insert into pushes (id, source, kind, dedupe_key, coalesce_key, order_key, payload, state,"
    " next_attempt_at, received_at, processed_at)"
    " values ({}, 'test', 'k', {}, {}, {}, '{{}}', {}, {}, {}, {})"
)


def old_rows() -> tuple[list[list[Any]], list[list[Any]]]:
    """The bookings and the pushes (every state; two of one booking waiting in order, one
    waiting with a coalesce key) of the old database, as statement parameters."""
    now = time.time()
    bookings = [
        [key, orjson.dumps(found).decode(), updated_at]
        for key, (found, updated_at) in OLD_BOOKINGS.items()
    ]
    old_pushes = [
        [
            id,
            id,
            coalesce_key,
            order_key,
            state,
            now - 10 + n,
            now - 10,
            None if state == "accepted" else now - 10,
        ]
        for n, (id, state, order_key, coalesce_key) in enumerate(OLD_PUSHES)
    ]
    return bookings, old_pushes


def old_sqlite(path: Path) -> SQLiteStore:
    """A database as the release before m009 left it, and the store that will upgrade it."""
    db = connect(path)
    db.enable_wal()
    migrations.apply(db, stop_before=COLUMNS)
    bookings, old_pushes = old_rows()
    for values in bookings:
        db.execute(INSERT_BOOKING.format(*"???"), values)
    for values in old_pushes:
        db.execute(INSERT_PUSH.format(*"?" * 8), values)
    db.conn.commit()
    db.close()
    return SQLiteStore(path)


async def old_postgres(url: str) -> Store:
    import asyncpg

    from gateway.store.postgres import PostgresStore
    from gateway.store.postgres import migrations as pg_migrations

    conn = await asyncpg.connect(url)
    try:
        await pg_migrations.apply(conn, stop_before=COLUMNS)
        bookings, old_pushes = old_rows()
        await conn.executemany(INSERT_BOOKING.format("$1", "$2", "$3"), bookings)
        marks = [f"${n}" for n in range(1, 9)]
        await conn.executemany(INSERT_PUSH.format(*marks), old_pushes)
    finally:
        await conn.close()
    return PostgresStore(url)


async def bookings_found_and_expired(store: Store) -> None:
    await store.open()
    try:
        past = await store.latest_booking("u-past")
        assert past is not None and past.key == "test:past"
        assert past.booking == OLD_BOOKINGS["test:past"][0]
        room = await store.latest_booking("u-room")
        assert room is not None and room.key == "test:room:0"
        found = await store.latest_bookings(BookingFilter(supplier_reference="S-future"))
        assert [b.key for b in found] == ["test:future"]
        found = await store.latest_bookings(BookingFilter(reseller_reference="R-room"))
        assert [b.key for b in found] == ["test:room:0"]
        everything = await store.latest_bookings(BookingFilter())
        assert [b.key for b in everything] == ["test:room:0", "test:future", "test:past"]

        # Written after the upgrade, by the writer: found by its new fields, not its old ones.
        update = booking_event("test:room:0")
        update.data["booking"].update(
            uuid="u-room", supplierReference="S-room", resellerReference="R-new"
        )
        update.data["booking"]["availability"]["localDateTimeEnd"] = "2099-02-01T11:00:00Z"
        push, _ = await store.insert_push(
            source="test", kind="k", payload={}, dedupe_key=None, order_key=None, lease_seconds=60
        )
        assert push.lease_token is not None
        await store.complete_push(push.id, push.lease_token, [update])
        assert await store.latest_bookings(BookingFilter(reseller_reference="R-room")) == []
        [moved] = await store.latest_bookings(BookingFilter(reseller_reference="R-new"))
        assert moved.key == "test:room:0" and moved.booking["notes"] == "update 0"

        removed = await store.apply_retention(Retention(stays_before="2025-01-01"))
        assert removed == {"booking_state": 1}
        assert await store.latest_booking("u-past") is None
        assert await store.latest_booking("u-future") is not None
    finally:
        await store.close()


async def test_a_database_from_before_m009_finds_and_expires_its_bookings_after_the_upgrade(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    await bookings_found_and_expired(old_sqlite(path))
    conn = sqlite3.connect(path)
    try:
        # The backfill holds what the writer would have written for each booking.
        row = conn.execute(
            "select booking, uuid, supplier_reference, reseller_reference, stay_end"
            " from booking_state where key = 'test:future'"
        ).fetchone()
        assert tuple(row[1:]) == booking_lookups(orjson.loads(row[0]))
        assert tuple(row[1:]) == ("u-future", "S-future", None, "2099-01-05")
        left = [
            sql
            for (sql,) in conn.execute(
                "select sql from sqlite_master where type = 'index' and tbl_name = 'booking_state'"
                " and sql is not null"
            )
        ]
        assert len(left) == 5 and not any("json_extract" in sql for sql in left), left
    finally:
        conn.close()


@pytest.mark.postgres
async def test_a_postgres_database_from_before_m009_finds_and_expires_its_bookings(
    pg_url: str,
) -> None:
    await bookings_found_and_expired(await old_postgres(pg_url))


async def waiting_pushes_keep_order_and_coalescing(store: Store) -> None:
    await store.open()
    try:
        assert await store.push_counts() == {"accepted": 3, "processed": 1, "failed": 1}
        assert [p.id for p in await store.list_pushes("failed")] == ["psh_failed"]
        assert [p.id for p in await store.list_pushes("accepted")] == [
            "psh_coalescing",
            "psh_second",
            "psh_first",
        ]
        assert [p.id for p in await store.list_pushes("processed")] == ["psh_done"]

        # A push with the waiting one's coalesce key joins it.
        joined, new = await store.insert_push(
            source="test",
            kind="k",
            payload={},
            dedupe_key="another",
            order_key=None,
            coalesce_key="ari:room",
        )
        assert not new and joined.id == "psh_coalescing"
        # The second push of booking test:b waits behind the first.
        claimed = {p.id: p for p in await store.claim_pushes(10, 60)}
        assert set(claimed) == {"psh_first", "psh_coalescing"}
        # A new push of test:b, processed before it was stored, waits its turn too.
        waits, new, created = await store.insert_processed_push(
            id="psh_third",
            source="test",
            kind="k",
            payload={},
            dedupe_key=None,
            order_key="test:b",
            events=[],
        )
        assert new and waits.state == "accepted" and created == 0
        first = claimed["psh_first"]
        assert first.lease_token is not None
        assert await store.complete_push(first.id, first.lease_token, []) == 0
        assert [p.id for p in await store.claim_pushes(10, 60)] == ["psh_second"]

        assert await store.replay_failed_pushes() == ["psh_failed"]
        assert await store.push_counts() == {"accepted": 4, "processed": 2}
        assert await store.list_pushes("failed") == []
    finally:
        await store.close()


async def test_pushes_waiting_in_a_database_from_before_m010_keep_their_order_and_coalescing(
    tmp_path: Path,
) -> None:
    await waiting_pushes_keep_order_and_coalescing(old_sqlite(tmp_path / "old.db"))


@pytest.mark.postgres
async def test_pushes_waiting_in_a_postgres_database_from_before_m010_keep_their_order(
    pg_url: str,
) -> None:
    await waiting_pushes_keep_order_and_coalescing(await old_postgres(pg_url))


async def test_the_columns_hold_what_the_booking_says_as_it_changes(tmp_path: Path) -> None:
    """Written by Python at the upsert, read by SQL: both must agree with the booking stored
    (the expressions the indexes held before), through an update that drops a reference."""
    store = SQLiteStore(tmp_path / "columns.db")
    await store.open()
    first = booking_event("test:b", 0)
    second = booking_event("test:b", 1)
    second.data["booking"]["resellerReference"] = None
    second.data["booking"]["availability"]["localDateTimeEnd"] = "2031-05-06T10:00:00-04:00"
    try:
        for event in (first, second):
            push, _ = await store.insert_push(
                source="test",
                kind="k",
                payload={},
                dedupe_key=None,
                order_key=None,
                lease_seconds=60,
            )
            assert push.lease_token is not None
            await store.complete_push(push.id, push.lease_token, [event])
            conn = sqlite3.connect(store.path)
            try:
                row = conn.execute(
                    "select uuid, supplier_reference, reseller_reference, stay_end,"
                    " json_extract(booking, '$.uuid'), json_extract(booking, '$.supplierReference'),"
                    " json_extract(booking, '$.resellerReference'),"
                    " substr(json_extract(booking, '$.availability.localDateTimeEnd'), 1, 10)"
                    " from booking_state where key = 'test:b'"
                ).fetchone()
            finally:
                conn.close()
            assert row[:4] == row[4:], row
        assert row[2] is None and row[3] == "2031-05-06"
        reference = first.data["booking"]["resellerReference"]
        assert await store.latest_bookings(BookingFilter(reseller_reference=reference)) == []
    finally:
        await store.close()


def plan(db: Any, sql: str) -> list[str]:
    params: Any = {k: 1 for k in re.findall(r":(\w+)", sql)} or [1] * sql.count("?")
    return [row[3] for row in db.execute("explain query plan " + sql, params).fetchall()]


def test_the_reads_go_through_the_new_indexes(tmp_path: Path) -> None:
    """SQLite uses a partial index only when the query implies its condition: each statement
    that reads pushes by a waiting or failed state, or bookings by a lookup column, must name
    it, or it reads the whole table (payloads and all)."""
    db = connect(tmp_path / "plans.db")
    migrations.apply(db)
    expected = {
        "claim pushes": (pushes.CLAIM_PUSHES, ["pushes_due", "pushes_order"]),
        "next push due": (pushes.NEXT_DUE, ["pushes_due", "pushes_order"]),
        "ahead": (pushes.AHEAD, ["pushes_order"]),
        "coalesces with": (pushes.COALESCES_WITH, ["pushes_coalesce"]),
        "list waiting": (pushes.list_pushes_sql("accepted"), ["pushes_waiting"]),
        "list failed": (pushes.list_pushes_sql("failed"), ["pushes_failed"]),
        "push counts": (operations.PUSH_COUNTS, ["pushes_due", "pushes_failed"]),
        "by uuid": (
            f"select key from booking_state where {reads.UUID} = ?",
            ["booking_state_uuid"],
        ),
        "by supplier reference": (
            f"select key from booking_state where {reads.SUPPLIER_REFERENCE} = ?",
            ["booking_state_supplier_reference"],
        ),
        "by reseller reference": (
            f"select key from booking_state where {reads.RESELLER_REFERENCE} = ?",
            ["booking_state_reseller_reference"],
        ),
        "stays ended": (
            f"select key from booking_state where {retention.STAY_END} < ? and updated_at < ?",
            ["booking_state_stay_end"],
        ),
    }
    for name, (sql, indexes) in expected.items():
        steps = plan(db, sql)
        assert not [s for s in steps if re.match(r"SCAN (pushes|booking_state)$", s)], (name, steps)
        for index in indexes:
            assert any(index in step for step in steps), (name, index, steps)
    # Everything else is processed: newest first by rowid, no sort of the whole table.
    processed = plan(db, pushes.list_pushes_sql("processed"))
    assert not any("TEMP B-TREE" in step for step in processed), processed
    db.close()
