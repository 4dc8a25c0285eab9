"""Room maps in PostgreSQL: written by ``complete_push`` in the transaction of the push's events.

A write succeeds only if the map's generation is still the one read (a conditional UPDATE, or an
INSERT that finds no row for a first map); otherwise ``RoomMapConflict`` rolls the whole push back,
whichever process got there first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.models import RoomMap, RoomMapUpdate
from gateway.store.interface import RoomMapConflict
from gateway.store.postgres.base import Conn, PostgresBase, text


class RoomMapStore(PostgresBase):
    async def get_room_map(self, source: str, booking: str) -> tuple[RoomMap, int] | None:
        row = await self.pool.fetchrow(
            "select map, generation from room_maps where source = $1 and booking = $2",
            source,
            text(booking),
        )
        if row is None:
            return None
        return RoomMap.model_validate_json(row["map"]), int(row["generation"])


async def write_room_maps(
    conn: Conn, updates: Sequence[RoomMapUpdate], now: float | None = None
) -> None:
    now = time.time() if now is None else now
    for update in updates:
        if update.generation == 0:
            status = await conn.execute(
                "insert into room_maps (source, booking, generation, map, updated_at)"
                " values ($1, $2, 1, $3, $4) on conflict (source, booking) do nothing",
                update.source,
                text(update.booking),
                update.rooms.model_dump_json(),
                now,
            )
        else:
            status = await conn.execute(
                "update room_maps set generation = generation + 1, map = $3, updated_at = $4"
                " where source = $1 and booking = $2 and generation = $5",
                update.source,
                text(update.booking),
                update.rooms.model_dump_json(),
                now,
                update.generation,
            )
        if not status.endswith(" 1"):
            raise RoomMapConflict(
                f"the room map of {update.source} booking {update.booking} changed meanwhile"
            )
