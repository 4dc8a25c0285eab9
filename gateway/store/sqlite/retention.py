"""Maintenance in SQLite: deleting what has been kept long enough.

Candidates are read on a reader thread and deleted in small chunks through the writer, each chunk
re-checked in its own transaction, so maintenance never holds the writer for long: pushes and
deliveries go in between, and a message replayed meanwhile is not deleted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import TypeVar

from sqlite_utils import Database

from gateway.store.interface import Retention
from gateway.store.sqlite.base import SQLiteBase

T = TypeVar("T")
CHUNK = 500  # rows deleted per write transaction

# Finished messages: delivered ones by when they were delivered (the console's index), the
# others by when they finished (m007_prune_finished_messages).
FINISHED_CANDIDATES = """
select seq from deliveries where state = 'delivered' and delivered_at < :before
union all
select seq from deliveries where state in ('dead', 'skipped', 'superseded') and updated_at < :before
"""
STILL_FINISHED = (
    "((state = 'delivered' and delivered_at < ?)"
    " or (state in ('dead', 'skipped', 'superseded') and updated_at < ?))"
)


class RetentionStore(SQLiteBase):
    async def apply_retention(self, retention: Retention) -> dict[str, int]:
        removed: Counter[str] = Counter()
        before = retention.messages_before

        def messages(db: Database) -> list[int]:
            return [row[0] for row in db.execute(FINISHED_CANDIDATES, {"before": before})]

        for chunk in _chunks(await self._read(messages)):
            removed.update(await self._write(partial(self._prune_messages, chunk, before)))

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
        for chunk in _chunks(unreferenced):
            removed["events"] += await self._write(partial(self._delete_events, chunk, newest))
        return {table: count for table, count in removed.items() if count}

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


def _chunks(items: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
