"""Erasing one guest's personal data in SQLite (``gateway erase --booking SOURCE:ID``).

Everything about the booking goes in one transaction: the pushes that carry it (found by the
booking's order key or by its id anywhere in the stored payload, a rejected push's raw body
included), its booking_update events with their messages, attempts and kept bodies, its state and
its room map. ``secure_delete`` is on for it, so the rows are overwritten, not just unlinked; the
free pages then go back to the file system and the write-ahead log is checkpointed and emptied,
so no copy is left in the file or beside it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import sqlite3
from collections import Counter
from functools import partial
from typing import Any

import orjson

from gateway.store.sqlite.retention import RetentionStore

# The kind ingest gives a push it could not parse; its payload keeps the raw body in base64.
REJECTED = "rejected"
TABLES = (
    "pushes",
    "events",
    "deliveries",
    "attempts",
    "delivery_bodies",
    "booking_state",
    "room_maps",
)


class EraseStore(RetentionStore):
    async def erase_booking(self, source: str, booking_id: str) -> dict[str, int]:
        removed = await self._write(partial(self._erase, source, booking_id), background=True)
        await self.release_free_pages()
        await self._empty_wal()
        return removed

    def _erase(self, source: str, booking_id: str) -> dict[str, int]:
        key = f"{source}:{booking_id}"
        removed: Counter[str] = Counter(dict.fromkeys(TABLES, 0))
        with self._immediate() as db:
            conn = db.conn
            conn.execute("PRAGMA secure_delete = ON")
            try:
                pushes = [
                    seq
                    for seq, order_key, kind, payload in conn.execute(
                        "select seq, order_key, kind, payload from pushes where source = ?",
                        [source],
                    )
                    if order_key == key or mentions(kind, payload, booking_id)
                ]
                removed["pushes"] = _delete_in(conn, "pushes", "seq", pushes)
                # A room's events are "<source>:<id>:<room>", the booking's own "<source>:<id>".
                events = [
                    row[0]
                    for row in conn.execute(
                        "select seq from events where event = 'booking_update'"
                        " and (subject = ? or (subject > ? and subject < ?))",
                        [key, key + ":", key + ";"],
                    )
                ]
                messages = _select_in(conn, "select seq from deliveries", "event_seq", events)
                removed["attempts"] = _delete_in(conn, "attempts", "delivery_seq", messages)
                removed["delivery_bodies"] = _delete_in(
                    conn, "delivery_bodies", "delivery_seq", messages
                )
                removed["deliveries"] = _delete_in(conn, "deliveries", "seq", messages)
                removed["events"] = _delete_in(conn, "events", "seq", events)
                removed["booking_state"] = conn.execute(
                    "delete from booking_state where key = ? or (key > ? and key < ?)",
                    [key, key + ":", key + ";"],
                ).rowcount
                removed["room_maps"] = conn.execute(
                    "delete from room_maps where source = ? and booking = ?", [source, booking_id]
                ).rowcount
            finally:
                conn.execute("PRAGMA secure_delete = FAST")
        return dict(removed)

    async def _empty_wal(self) -> None:
        """Checkpoint everything into the database and truncate the write-ahead log, where older
        copies of the erased pages still are. Readers of another process (a running gateway)
        may hold it up a moment: tried a few times."""
        loop = asyncio.get_running_loop()
        for _ in range(10):
            busy = await loop.run_in_executor(self._writer, self._truncate_wal)
            if not busy:
                return
            await asyncio.sleep(0.2)
        raise sqlite3.OperationalError(
            "the booking's rows are erased, but older copies stay in the write-ahead log until"
            " it can be emptied (readers kept it busy): run the command again"
        )

    def _truncate_wal(self) -> bool:
        with self._waiting_connection() as db:
            [busy, _, _] = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return bool(busy)


def mentions(kind: str, payload: str | None, booking_id: str) -> bool:
    """Whether a stored push payload names the booking: its id as any value in the JSON (a
    rejected push: in its raw body or query)."""
    if not payload:
        return False
    doc = orjson.loads(payload)
    if kind != REJECTED or not isinstance(doc, dict):
        return booking_id in payload and holds(doc, booking_id)
    if holds(doc.get("query"), booking_id):
        return True
    try:
        raw = base64.b64decode(doc.get("body") or "")
    except (binascii.Error, ValueError):
        return False
    try:
        return holds(json.loads(raw), booking_id)
    except (ValueError, RecursionError):
        text = raw.decode("utf-8", "replace")
        return (
            re.search(rf"(?<![0-9A-Za-z]){re.escape(booking_id)}(?![0-9A-Za-z])", text) is not None
        )


def holds(value: Any, wanted: str) -> bool:
    if isinstance(value, dict):
        return any(holds(v, wanted) for v in value.values())
    if isinstance(value, list):
        return any(holds(v, wanted) for v in value)
    if value is None or isinstance(value, bool):
        return False
    return str(value) == wanted


def _select_in(conn: sqlite3.Connection, sql: str, column: str, values: list[int]) -> list[int]:
    found: list[int] = []
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found += [row[0] for row in conn.execute(f"{sql} where {column} in ({marks})", chunk)]
    return found


def _delete_in(conn: sqlite3.Connection, table: str, column: str, values: list[int]) -> int:
    gone = 0
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        marks = ",".join("?" * len(chunk))
        gone += conn.execute(f"delete from {table} where {column} in ({marks})", chunk).rowcount
    return gone
