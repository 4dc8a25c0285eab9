"""``gateway migrate-store``: copy an SQLite database into an empty PostgreSQL one.

Both are first brought to the latest schema (the same migration history), then every table is
copied row for row with its ids and sequence numbers, in one PostgreSQL transaction: the target
has everything or nothing. The SQLite file is read inside an IMMEDIATE transaction, so a gateway
still running on it cannot write meanwhile (stop it first; it would wait or fail). What was in
flight there (a leased push or delivery) is handed back as due now, so the first PostgreSQL
process takes it at once; retries keep their schedule and every message keeps its webhook-id.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway.store.postgres import migrations
from gateway.store.postgres.base import dumps, text, unusable_url, without_nul
from gateway.store.sqlite.base import connect
from gateway.store.sqlite.migrations import migrations as sqlite_migrations

# Parents before children (deliveries refer to events).
TABLE_ORDER = [
    "subscriptions",
    "pushes",
    "events",
    "booking_state",
    "availability_state",
    "deliveries",
    "delivery_bodies",
    "attempts",
    "room_maps",
]


class CopyError(Exception):
    """Why the copy was refused; nothing was written."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)  # leases handed back, per table


async def copy_sqlite_to_postgres(source: Path, url: str) -> CopyReport:
    if not source.exists():
        raise CopyError(f"{source}: no such database")
    db = connect(source)
    try:
        sqlite_migrations.apply(db)  # the same schema version on both sides
        names = [m.name for m in sqlite_migrations._migrations]
        unknown = [name for name in names if name not in migrations.NAMES]
        if unknown:
            raise CopyError(f"{source}: migrations this PostgreSQL store lacks: {unknown}")
        try:
            conn = await asyncpg.connect(url)
        except ValueError as exc:
            raise CopyError(f"--to: {unusable_url(url, exc)}") from None
        try:
            await migrations.apply(conn)
            db.conn.execute("BEGIN IMMEDIATE")  # no writer on the file while we read it
            try:
                return await _copy(db.conn, conn)
            finally:
                db.conn.execute("ROLLBACK")
        finally:
            await conn.close()
    finally:
        db.close()


async def _copy(lite: sqlite3.Connection, conn: asyncpg.Connection) -> CopyReport:
    report = CopyReport()
    tables = await _pg_tables(conn)
    order = [t for t in TABLE_ORDER if t in tables] + sorted(set(tables) - set(TABLE_ORDER))
    async with conn.transaction():
        for table in order:
            if await conn.fetchval(f"select exists (select 1 from {table})"):
                raise CopyError(f"the PostgreSQL database already has rows in {table}")
        now = time.time()
        for table in order:
            pg_columns = tables[table]
            lite_columns = [row[1] for row in lite.execute(f"pragma table_info({table})")]
            columns = [c for c in lite_columns if c in pg_columns]
            if not columns:
                continue
            cursor = lite.execute(f"select {', '.join(columns)} from {table}")
            records = []
            released = 0
            for values in cursor:
                row = dict(zip(columns, values, strict=True))
                released += _hand_back(table, row, now)
                if table == "booking_state":
                    row["booking"] = _parsable(row["booking"])
                records.append(tuple(_typed(row[c], pg_columns[c]) for c in columns))
            if records:
                await conn.copy_records_to_table(table, records=records, columns=columns)
            report.rows[table] = len(records)
            if released:
                report.released[table] = released
        # Sequences continue after the copied ids.
        for table, column in await _serial_columns(conn):
            await conn.execute(
                f"select setval(pg_get_serial_sequence('{table}', '{column}'),"
                f" coalesce((select max({column}) from {table}), 0) + 1, false)"
            )
    return report


def _hand_back(table: str, row: dict[str, Any], now: float) -> int:
    """A lease held by the SQLite gateway (stopped now) is released: due at once."""
    if table not in ("pushes", "deliveries") or row.get("lease_token") is None:
        return 0
    row["lease_token"] = None
    row["lease_expires_at"] = None
    row["next_attempt_at"] = now
    if table == "deliveries" and row.get("state") == "leased":
        row["state"] = "pending"
    return 1


def _parsable(booking: Any) -> Any:
    """A booking's JSON as PostgreSQL parses it (its indexes read it as jsonb, which refuses
    \\u0000): NUL in its strings as U+FFFD, as the PostgreSQL store keeps them."""
    if isinstance(booking, str) and "\\u0000" in booking:
        return dumps(without_nul(orjson.loads(booking)))
    return booking


def _typed(value: Any, pg_type: str) -> Any:
    """SQLite stores whole REALs as integers and has no booleans: give PostgreSQL its types. Text
    holding NUL (which SQLite keeps and PostgreSQL refuses) has U+FFFD in its place."""
    if value is None:
        return None
    if pg_type == "text" and isinstance(value, str):
        return text(value)
    if pg_type == "double precision":
        return float(value)
    if pg_type in ("integer", "bigint"):
        return int(value)
    if pg_type == "bytea" and isinstance(value, str):
        return value.encode("utf-8")
    return value


async def _pg_tables(conn: asyncpg.Connection) -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    for row in await conn.fetch(
        "select table_name, column_name, data_type from information_schema.columns"
        " where table_schema = current_schema() and table_name <> 'gateway_migrations'"
        " order by table_name, ordinal_position"
    ):
        tables.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
    return tables


async def _serial_columns(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "select table_name, column_name from information_schema.columns"
        " where table_schema = current_schema() and column_default like 'nextval(%'"
    )
    return [(row["table_name"], row["column_name"]) for row in rows]
