"""Read-mostly queries for operators (the console): subscription health, delivery activity per
minute, one message with its attempts, pushes by state, and replaying one message.

Kept apart from the hot-path modules: none of this runs per push or per delivery. Windows are
read newest first and stop at the window's start (attempts by primary key, deliveries by their
delivered_at index), so the cost follows the window, not the table.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
from sqlite_utils import Database

from gateway.models import AttemptRecord, DeliveryRecord
from gateway.store.observations import Activity, Minute, SubscriptionHealth
from gateway.store.sqlite.base import SQLiteBase

FINISHED = ("delivered", "dead", "skipped")
# Attempts are numbered as they are recorded, a little after they are made: reading newest first
# stops only this far past the window's start, so one recorded late is not taken for the end.
SKEW = 120.0
# Every push (through the narrowest index), the waiting and the failed ones (their partial
# indexes), in one read; the rest are processed. A group by state read every row, payloads and all:
# no index holds processed pushes (m010).
PUSH_COUNTS = (
    "select (select count(*) from pushes),"
    " (select count(*) from pushes where state = 'accepted'),"
    " (select count(*) from pushes where state = 'failed')"
)


class OperationsStore(SQLiteBase):
    async def subscription_health(
        self, subscription_ids: list[str], since: float
    ) -> dict[str, SubscriptionHealth]:
        def read(db: Database) -> dict[str, SubscriptionHealth]:
            return {id: _health(db, id, since) for id in subscription_ids}

        return await self._read(read)

    async def get_delivery(self, subscription_id: str, id: str) -> DeliveryRecord | None:
        """One message of a subscription with its event's data (None if not that one's)."""

        def read(db: Database) -> DeliveryRecord | None:
            rows = list(
                db.query(
                    "select d.*, e.event, e.data, b.body from deliveries d"
                    " join events e on e.seq = d.event_seq"
                    " left join delivery_bodies b on b.delivery_seq = d.seq"
                    " where d.id = ? and d.subscription_id = ?",
                    [id, subscription_id],
                )
            )
            if not rows:
                return None
            row = rows[0]
            row["data"] = orjson.loads(row["data"])
            fields = {k: row[k] for k in DeliveryRecord.model_fields if k in row}
            return DeliveryRecord(**fields)

        return await self._read(read)

    async def message_attempts(self, subscription_id: str, id: str) -> list[AttemptRecord]:
        """Every attempt at one message, oldest first."""

        def read(db: Database) -> list[AttemptRecord]:
            rows = db.query(
                "select a.*, d.id as delivery_id from attempts a"
                " join deliveries d on d.seq = a.delivery_seq"
                " where d.id = ? and d.subscription_id = ? order by a.id",
                [id, subscription_id],
            )
            fields = AttemptRecord.model_fields
            return [AttemptRecord(**{k: v for k, v in r.items() if k in fields}) for r in rows]

        return await self._read(read)

    async def replay_delivery(self, subscription_id: str, id: str) -> bool:
        """Send one finished message again, like ``replay_deliveries`` does for a time range:
        same webhook-id and attempt numbers, the whole retry schedule again, rendered afresh.
        False when it is not this subscription's or is still waiting."""

        def replay() -> bool:
            now = time.time()
            with self._immediate() as db:
                found = db.execute(
                    "select seq from deliveries where id = ? and subscription_id = ?"
                    " and state in (?, ?, ?)",
                    [id, subscription_id, *FINISHED],
                ).fetchone()
                if found is None:
                    return False
                db.execute("delete from delivery_bodies where delivery_seq = ?", [found[0]])
                db.execute(
                    "update deliveries set state = 'pending', replayed_after = attempts,"
                    " next_attempt_at = ?, updated_at = ? where seq = ?",
                    [now, now, found[0]],
                )
                return True

        return await self._write(replay)

    async def push_counts(self) -> dict[str, int]:
        def read(db: Database) -> dict[str, int]:
            [total, accepted, failed] = db.execute(PUSH_COUNTS).fetchone()
            counts = {
                "accepted": accepted,
                "processed": total - accepted - failed,
                "failed": failed,
            }
            return {state: int(count) for state, count in counts.items() if count}

        return await self._read(read)

    async def delivery_activity(self, since: float, *, max_rows: int = 50_000) -> Activity:
        """Attempts per minute by outcome, and push-to-delivery latency percentiles per minute,
        from ``since`` to now; reads at most ``max_rows`` of each."""

        def read(db: Database) -> Activity:
            start = math.floor(since / 60) * 60
            buckets = int((time.time() - start) // 60) + 1
            delivered = [0] * buckets
            failed = [0] * buckets
            latencies: list[list[float]] = [[] for _ in range(buckets)]
            rows = db.execute(
                "select attempted_at, outcome from attempts order by id desc limit ?", [max_rows]
            ).fetchall()
            # All rows read and still inside the window: there may be more than were read.
            capped = len(rows) == max_rows and rows[-1][0] >= since
            for attempted_at, outcome in rows:
                if attempted_at < since - SKEW:
                    break
                if attempted_at < since:
                    continue
                index = min(int((attempted_at - start) // 60), buckets - 1)
                if outcome == "delivered":
                    delivered[index] += 1
                elif outcome != "skipped":
                    failed[index] += 1
            for delivered_at, seconds in db.execute(
                "select d.delivered_at, d.delivered_at - p.received_at"
                " from deliveries d indexed by deliveries_delivered"
                " join events e on e.seq = d.event_seq join pushes p on p.id = e.push_id"
                " where d.state = 'delivered' and d.delivered_at >= ? and d.replayed_after = 0"
                " order by d.delivered_at desc limit ?",
                [since, max_rows],
            ):
                index = min(int((delivered_at - start) // 60), buckets - 1)
                latencies[index].append(max(seconds, 0.0) * 1000)
            minutes = [
                Minute(
                    start=start + 60 * i,
                    delivered=delivered[i],
                    failed=failed[i],
                    latency_p50_ms=_percentile(latencies[i], 0.5),
                    latency_p95_ms=_percentile(latencies[i], 0.95),
                )
                for i in range(buckets)
            ]
            return Activity(minutes=minutes, capped=capped)

        return await self._read(read)


def _health(db: Database, subscription_id: str, since: float) -> SubscriptionHealth:
    last: dict[str, Any] = {}
    attempts = delivered = 0
    # Newest first along the (subscription_id, id) index, stopping at the window's start.
    for row in db.query(
        "select attempted_at, outcome, status, error from attempts"
        " where subscription_id = ? order by id desc",
        [subscription_id],
    ):
        if not last:
            last = row
        if row["attempted_at"] < since - SKEW:
            break
        if row["attempted_at"] < since:
            continue
        if row["outcome"] == "skipped":
            continue
        attempts += 1
        delivered += row["outcome"] == "delivered"
    waiting = db.execute(
        "select count(*) from deliveries where subscription_id = ? and state in ('pending', 'leased')",
        [subscription_id],
    ).fetchone()[0]
    return SubscriptionHealth(
        last_attempt_at=last.get("attempted_at"),
        last_outcome=last.get("outcome"),
        last_status=last.get("status"),
        last_error=last.get("error"),
        attempts=attempts,
        delivered=delivered,
        waiting=int(waiting),
    )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 1)
