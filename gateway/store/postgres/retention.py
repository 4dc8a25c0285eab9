"""Maintenance and erasure in PostgreSQL: deleting what has been kept long enough, and one guest's
booking on request.

The SQLite store's rules (gateway/store/sqlite/retention.py and erase.py), deleted CHUNK rows per
transaction so other writes go in between; ``FOR UPDATE SKIP LOCKED`` lets processes maintaining
at once skip each other's rows. Space: PostgreSQL's (auto)vacuum makes deleted rows' space
reusable; ``erase_booking`` vacuums the tables it touched at once. Older copies of erased rows can
remain in the server's WAL until it is recycled, and in its backups: that is the database
operator's to manage.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import asyncpg

from gateway.store.interface import Retention
from gateway.store.postgres.base import PostgresBase
from gateway.store.sqlite.base import _ts
from gateway.store.sqlite.erase import TABLES, mentions

CHUNK = 500  # rows deleted per transaction
STAY_END = "stay_end"  # the stay's last day, written beside the booking (m009)
DAY = "right(key, 10)"
IS_DAY = f"{DAY} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$'"
# A booking_state key without its last ':'-part: "<source>:<booking>" for a room's state.
ROOM_OWNER = "left(s.key, length(s.key) - strpos(reverse(s.key), ':'))"


class RetentionStore(PostgresBase):
    async def apply_retention(self, retention: Retention) -> dict[str, int]:
        removed: Counter[str] = Counter()
        if retention.messages_before is not None:
            removed.update(await self._prune_messages_and_events(retention.messages_before))
        if retention.pushes_before is not None or retention.failed_pushes_before is not None:
            removed["pushes"] += await self._chunked(
                "delete from pushes where seq in (select seq from pushes"
                " where (state = 'processed' and processed_at < $1)"
                " or (state = 'failed' and processed_at < $2)"
                " limit $3 for update skip locked)",
                retention.pushes_before or 0.0,
                retention.failed_pushes_before or 0.0,
            )
        if retention.stays_before is not None:
            day = retention.stays_before
            removed["booking_state"] += await self._chunked(
                "delete from booking_state where key in (select key from booking_state"
                f" where {STAY_END} < $1 and updated_at < $2 limit $3 for update skip locked)",
                day,
                retention.state_untouched_before
                if retention.state_untouched_before is not None
                else float("inf"),
            )
            # A room map is needed while its booking has state: it names the rooms' uuids. A
            # room's state is "<source>:<booking>:<room>": its booking is what precedes the last
            # ':'. (Not a range such as key > 'x:B1:' and key < 'x:B1;', as SQLite's: in a
            # database that does not collate as C those don't sort as bytes, and the range finds
            # nothing.) Equalities, so one hash anti-join answers for every map.
            removed["room_maps"] += await self._chunked(
                "delete from room_maps m where (source, booking) in (select source, booking"
                " from room_maps r where not exists (select 1 from booking_state s"
                " where s.key = r.source || ':' || r.booking)"
                f" and not exists (select 1 from booking_state s where {ROOM_OWNER}"
                " = r.source || ':' || r.booking)"
                " limit $1 for update skip locked)"
            )
            removed["availability_state"] += await self._chunked(
                "delete from availability_state where key in (select key from availability_state"
                f" where {IS_DAY} and {DAY} < $1 limit $2 for update skip locked)",
                day,
            )
        return {table: count for table, count in removed.items() if count}

    async def release_free_pages(self) -> int:
        """PostgreSQL's autovacuum makes the space of deleted rows reusable by itself; nothing
        is given back to the file system here (that takes VACUUM FULL, an operator's call)."""
        return 0

    async def erase_booking(self, source: str, booking_id: str) -> dict[str, int]:
        key = f"{source}:{booking_id}"
        removed: Counter[str] = Counter(dict.fromkeys(TABLES, 0))
        async with self.pool.acquire() as conn, conn.transaction():
            pushes = [
                row["seq"]
                for row in await conn.fetch(
                    "select seq, order_key, kind, payload from pushes where source = $1", source
                )
                if row["order_key"] == key or mentions(row["kind"], row["payload"], booking_id)
            ]
            removed["pushes"] = _count(
                await conn.execute("delete from pushes where seq = any($1::bigint[])", pushes)
            )
            # A room's events are "<source>:<id>:<room>", the booking's own "<source>:<id>".
            # (starts_with, not a range up to "<source>:<id>;": that sorts as bytes only in a
            # database collating as C.)
            events = [
                row["seq"]
                for row in await conn.fetch(
                    "select seq from events where event = 'booking_update'"
                    " and (subject = $1 or starts_with(subject, $2))",
                    key,
                    key + ":",
                )
            ]
            messages = [
                row["seq"]
                for row in await conn.fetch(
                    "select seq from deliveries where event_seq = any($1::bigint[])", events
                )
            ]
            for table, column, values in (
                ("attempts", "delivery_seq", messages),
                ("delivery_bodies", "delivery_seq", messages),
                ("deliveries", "seq", messages),
                ("events", "seq", events),
            ):
                removed[table] = _count(
                    await conn.execute(
                        f"delete from {table} where {column} = any($1::bigint[])", values
                    )
                )
            removed["booking_state"] = _count(
                await conn.execute(
                    "delete from booking_state where key = $1 or starts_with(key, $2)",
                    key,
                    key + ":",
                )
            )
            removed["room_maps"] = _count(
                await conn.execute(
                    "delete from room_maps where source = $1 and booking = $2", source, booking_id
                )
            )
        # The deleted rows' space is cleared now rather than at autovacuum's next pass.
        for table in TABLES:
            await self.pool.execute(f"vacuum {table}")
        return dict(removed)

    async def _prune_messages_and_events(self, before: float) -> Counter[str]:
        removed: Counter[str] = Counter()
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                seqs = [
                    row["seq"]
                    for row in await conn.fetch(
                        "delete from deliveries where seq in (select seq from deliveries"
                        " where (state = 'delivered' and delivered_at < $1)"
                        " or (state in ('dead', 'skipped', 'superseded') and updated_at < $1)"
                        " limit $2 for update skip locked) returning seq",
                        before,
                        CHUNK,
                    )
                ]
                if not seqs:
                    break
                status = await conn.execute(
                    "delete from attempts where delivery_seq = any($1::bigint[])", seqs
                )
                await conn.execute(
                    "delete from delivery_bodies where delivery_seq = any($1::bigint[])", seqs
                )
            removed["deliveries"] += len(seqs)
            removed["attempts"] += _count(status)
        # Events no message refers to any more are history nobody can replay.
        removed["events"] += await self._chunked(
            "delete from events where seq in (select e.seq from events e"
            " where e.created_at < $1 and not exists"
            " (select 1 from deliveries d where d.event_seq = e.seq)"
            " limit $2 for update skip locked)",
            before,
        )
        # A deleted subscription (its secret, its URL's password) goes for good once none of
        # its messages is left; until then its history still names it.
        removed["subscriptions"] += _count(
            await self.pool.execute(
                "delete from subscriptions where deleted_at is not null and deleted_at < $1"
                " and not exists (select 1 from deliveries d where d.subscription_id = subscriptions.id)",
                _ts(datetime.fromtimestamp(before, UTC)),
            )
        )
        return removed

    async def _chunked(self, sql: str, *params: object) -> int:
        """Run a DELETE of at most CHUNK rows (its last parameter) until it deletes none."""
        gone = 0
        while True:
            try:
                count = _count(await self.pool.execute(sql, *params, CHUNK))
            except asyncpg.DeadlockDetectedError:
                continue  # another process's maintenance; the rows are still there to take
            if not count:
                return gone
            gone += count


def _count(status: str) -> int:
    return int(status.split()[-1])
