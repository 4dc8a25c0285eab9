"""Maintenance in SQLite: deleting what has been kept long enough, and giving the space back.

Candidates are read on a reader thread and deleted in small chunks through the writer, each chunk
re-checked in its own transaction, so maintenance never holds the writer for long: pushes and
deliveries go in between, and a message or push replayed meanwhile is not deleted. Free pages are
then handed back to the file system (auto_vacuum = INCREMENTAL, migration m007_incremental_vacuum)
a chunk at a time.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from functools import partial

from sqlite_utils import Database

from gateway.store.interface import Retention
from gateway.store.sqlite.base import SQLiteBase, _chunks, _ts

CHUNK = 500  # rows deleted per write transaction
PAGES = 2000  # pages given back per write transaction

# A booking's stay ends on its OCTO availability's last local day, written beside the booking
# (m009_booking_state_columns) and indexed where known.
STAY_END = "stay_end"
# availability_state.key ends with the day it is for: "<source>:<product>|<option>|YYYY-MM-DD".
DAY = "substr(key, -10)"
IS_DAY = f"{DAY} glob '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'"
FINISHED_PUSH = (
    "((state = 'processed' and processed_at < :processed)"
    " or (state = 'failed' and processed_at < :failed))"
)

# Finished messages: delivered ones by when they were delivered (the console's index), the
# others by when they finished (deliveries_ended, m012: its condition written exactly so, or
# SQLite does not use it).
ENDED = "(state = 'dead' or state = 'skipped' or state = 'superseded')"
FINISHED_CANDIDATES = f"""
select seq from deliveries where state = 'delivered' and delivered_at < :before
union all
select seq from deliveries where {ENDED} and updated_at < :before
"""
STILL_FINISHED = f"((state = 'delivered' and delivered_at < ?) or ({ENDED} and updated_at < ?))"


class RetentionStore(SQLiteBase):
    async def apply_retention(self, retention: Retention) -> dict[str, int]:
        removed: Counter[str] = Counter()
        if retention.messages_before is not None:
            removed.update(await self._prune_messages_and_events(retention.messages_before))
        if retention.pushes_before is not None or retention.failed_pushes_before is not None:
            removed["pushes"] += await self._prune_pushes(
                retention.pushes_before, retention.failed_pushes_before
            )
        if retention.stays_before is not None:
            removed.update(
                await self._prune_state(retention.stays_before, retention.state_untouched_before)
            )
        return {table: count for table, count in removed.items() if count}

    async def release_free_pages(self) -> int:
        released = 0
        while True:
            step = await self._write(partial(self._vacuum_some, PAGES), background=True)
            released += step
            if step < PAGES:
                return released

    def _vacuum_some(self, pages: int) -> int:
        with self._immediate() as db:
            [free] = db.execute("PRAGMA freelist_count").fetchone()
            step = min(int(free), pages)
            for _ in range(step):  # Python's sqlite3 steps this pragma once: one page a call
                db.execute("PRAGMA incremental_vacuum")
            return step

    async def _prune_messages_and_events(self, before: float) -> Counter[str]:
        removed: Counter[str] = Counter()

        def messages(db: Database) -> list[int]:
            return [row[0] for row in db.execute(FINISHED_CANDIDATES, {"before": before})]

        for chunk in _chunks(await self._read(messages), CHUNK):
            removed.update(
                await self._write(partial(self._prune_messages, chunk, before), background=True)
            )

        # Events no message refers to. A message created after this read refers to a new event
        # (or, replayed, to one that was referred to already), so only those need a re-check.
        def events(db: Database) -> tuple[list[int], int]:
            [newest] = db.execute("select coalesce(max(seq), 0) from deliveries").fetchone()
            rows = db.execute(
                "select seq from events where created_at < ?"
                " and seq not in (select event_seq from deliveries)",
                [before],
            )
            return [row[0] for row in rows], int(newest)

        unreferenced, newest = await self._read(events)
        for chunk in _chunks(unreferenced, CHUNK):
            removed["events"] += await self._write(
                partial(self._delete_events, chunk, newest), background=True
            )

        # A deleted subscription (its secret, its URL's password) goes for good once none of its
        # messages is left; until then its history still names it.
        deleted_before = _ts(datetime.fromtimestamp(before, UTC))

        def forget() -> int:
            with self._immediate() as db:
                return int(
                    db.execute(
                        "delete from subscriptions where deleted_at is not null"
                        " and deleted_at < ? and not exists"
                        " (select 1 from deliveries d where d.subscription_id = subscriptions.id)",
                        [deleted_before],
                    ).rowcount
                )

        removed["subscriptions"] += await self._write(forget, background=True)
        return removed

    async def _prune_pushes(self, processed: float | None, failed: float | None) -> int:
        cutoffs = {"processed": processed or 0.0, "failed": failed or 0.0}

        def candidates(db: Database) -> list[int]:
            rows = db.execute(f"select seq from pushes where {FINISHED_PUSH}", cutoffs)
            return [row[0] for row in rows]

        def delete(seqs: list[int]) -> int:
            with self._immediate() as db:
                marks = ",".join(f":s{i}" for i in range(len(seqs)))
                params = {**cutoffs, **{f"s{i}": seq for i, seq in enumerate(seqs)}}
                return int(
                    db.execute(
                        f"delete from pushes where seq in ({marks}) and {FINISHED_PUSH}", params
                    ).rowcount
                )

        gone = 0
        for chunk in _chunks(await self._read(candidates), CHUNK):
            gone += await self._write(partial(delete, chunk), background=True)
        return gone

    async def _prune_state(self, day: str, untouched_before: float | None) -> Counter[str]:
        """Bookings whose stay ended before ``day`` (and then the room maps of bookings with no
        state left), and availability of days before it."""
        removed: Counter[str] = Counter()
        untouched = float("inf") if untouched_before is None else untouched_before

        def bookings(db: Database) -> list[str]:
            rows = db.execute(
                f"select key from booking_state where {STAY_END} < ? and updated_at < ?",
                [day, untouched],
            )
            return [row[0] for row in rows]

        def delete_bookings(keys: list[str]) -> int:
            with self._immediate() as db:
                marks = ",".join("?" * len(keys))
                return int(
                    db.execute(
                        f"delete from booking_state where key in ({marks}) and {STAY_END} < ?"
                        " and updated_at < ?",
                        [*keys, day, untouched],
                    ).rowcount
                )

        for keys in _chunks(await self._read(bookings), CHUNK):
            removed["booking_state"] += await self._write(
                partial(delete_bookings, keys), background=True
            )

        # A room map is needed while its booking has state: it names the rooms' uuids.
        def orphan_maps(db: Database) -> list[tuple[str, str]]:
            rows = db.execute(
                "select source, booking from room_maps m where not exists"
                " (select 1 from booking_state s where s.key = m.source || ':' || m.booking"
                " or (s.key > m.source || ':' || m.booking || ':'"
                " and s.key < m.source || ':' || m.booking || ';'))"
            )
            return [(row[0], row[1]) for row in rows]

        def delete_maps(maps: list[tuple[str, str]]) -> int:
            with self._immediate() as db:
                gone = 0
                for source, booking in maps:
                    key = f"{source}:{booking}"
                    if db.execute(
                        "select 1 from booking_state where key = ? or (key > ? and key < ?)",
                        [key, key + ":", key + ";"],
                    ).fetchone():
                        continue  # a push for it was processed meanwhile
                    gone += db.execute(
                        "delete from room_maps where source = ? and booking = ?", [source, booking]
                    ).rowcount
                return gone

        for maps in _chunks(await self._read(orphan_maps), CHUNK):
            removed["room_maps"] += await self._write(partial(delete_maps, maps), background=True)

        def days(db: Database) -> list[str]:
            rows = db.execute(
                f"select key from availability_state where {IS_DAY} and {DAY} < ?", [day]
            )
            return [row[0] for row in rows]

        def delete_days(keys: list[str]) -> int:
            with self._immediate() as db:
                marks = ",".join("?" * len(keys))
                return int(
                    db.execute(
                        f"delete from availability_state where key in ({marks})", keys
                    ).rowcount
                )

        for day_keys in _chunks(await self._read(days), CHUNK):
            removed["availability_state"] += await self._write(
                partial(delete_days, day_keys), background=True
            )
        return removed

    def _prune_messages(self, seqs: list[int], before: float) -> Counter[str]:
        with self._immediate() as db:
            marks = ",".join("?" * len(seqs))
            gone = [
                row[0]
                for row in db.execute(
                    f"delete from deliveries where seq in ({marks}) and {STILL_FINISHED}"
                    " returning seq",
                    [*seqs, before, before],
                ).fetchall()
            ]
            if not gone:
                return Counter()
            marks = ",".join("?" * len(gone))
            attempts = db.execute(f"delete from attempts where delivery_seq in ({marks})", gone)
            db.execute(f"delete from delivery_bodies where delivery_seq in ({marks})", gone)
            return Counter({"deliveries": len(gone), "attempts": attempts.rowcount})

    def _delete_events(self, seqs: list[int], newest_message: int) -> int:
        with self._immediate() as db:
            marks = ",".join("?" * len(seqs))
            return int(
                db.execute(
                    f"delete from events where seq in ({marks}) and seq not in"
                    " (select event_seq from deliveries where seq > ?)",
                    [*seqs, newest_message],
                ).rowcount
            )
