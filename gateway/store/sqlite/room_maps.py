"""Room maps in SQLite: which room of a multi-room booking is which, kept between revisions.

A map is read while a push is processed and written by ``complete_push`` in the transaction that
stores the push's events, so a crash keeps both or neither and a reprocessed push computes the
same map again. Each write bumps the row's generation; a write whose generation moved on since it
was read (another push for the booking got there first) fails the whole transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlite_utils import Database

from gateway.models import RoomMap, RoomMapUpdate
from gateway.store.interface import RoomMapConflict
from gateway.store.sqlite.base import SQLiteBase


class RoomMapStore(SQLiteBase):
    async def get_room_map(self, source: str, booking: str) -> tuple[RoomMap, int] | None:
        def get(db: Database) -> tuple[RoomMap, int] | None:
            row = db.execute(
                "select map, generation from room_maps where source = ? and booking = ?",
                [source, booking],
            ).fetchone()
            return None if row is None else (RoomMap.model_validate_json(row[0]), int(row[1]))

        return await self._read(get)


def write_room_maps(
    db: Database, updates: Sequence[RoomMapUpdate], now: float | None = None
) -> None:
    """Store each map if its generation is still the one read; else raise ``RoomMapConflict``
    (the caller's transaction then rolls back)."""
    now = time.time() if now is None else now
    for update in updates:
        row = db.execute(
            "select generation from room_maps where source = ? and booking = ?",
            [update.source, update.booking],
        ).fetchone()
        current = 0 if row is None else int(row[0])
        if current != update.generation:
            raise RoomMapConflict(
                f"the room map of {update.source} booking {update.booking} changed meanwhile"
            )
        db.execute(
            "insert into room_maps (source, booking, generation, map, updated_at)"
            " values (?, ?, ?, ?, ?) on conflict (source, booking) do update set"
            " generation = excluded.generation, map = excluded.map,"
            " updated_at = excluded.updated_at",
            [
                update.source,
                update.booking,
                current + 1,
                update.rooms.model_dump_json(),
                now,
            ],
        )
