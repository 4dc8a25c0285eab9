"""Read-mostly queries for operators (the console) in PostgreSQL: subscription health, delivery
activity per minute, one message with its attempts, pushes by state, replaying one message.

The SQLite store's queries (gateway/store/sqlite/operations.py), with PostgreSQL's placeholders;
the windowing and percentile rules are shared with it.
"""

from __future__ import annotations

import math
import time

import orjson

from gateway.models import AttemptRecord, DeliveryRecord
from gateway.store.observations import Activity, Minute, SubscriptionHealth
from gateway.store.postgres.base import DELIVERIES_CHANNEL, Conn, PostgresBase, record
from gateway.store.sqlite.operations import FINISHED, SKEW, _percentile


class OperationsStore(PostgresBase):
    async def subscription_health(
        self, subscription_ids: list[str], since: float
    ) -> dict[str, SubscriptionHealth]:
        async with self.pool.acquire() as conn:
            return {id: await _health(conn, id, since) for id in subscription_ids}

    async def get_delivery(self, subscription_id: str, id: str) -> DeliveryRecord | None:
        row = await self.pool.fetchrow(
            "select d.*, e.event, e.data, b.body from deliveries d"
            " join events e on e.seq = d.event_seq"
            " left join delivery_bodies b on b.delivery_seq = d.seq"
            " where d.id = $1 and d.subscription_id = $2",
            id,
            subscription_id,
        )
        if row is None:
            return None
        found = record(row)
        found["data"] = orjson.loads(found["data"])
        return DeliveryRecord(**{k: found[k] for k in DeliveryRecord.model_fields if k in found})

    async def message_attempts(self, subscription_id: str, id: str) -> list[AttemptRecord]:
        rows = await self.pool.fetch(
            "select a.*, d.id as delivery_id from attempts a"
            " join deliveries d on d.seq = a.delivery_seq"
            " where d.id = $1 and d.subscription_id = $2 order by a.id",
            id,
            subscription_id,
        )
        fields = AttemptRecord.model_fields
        return [AttemptRecord(**{k: v for k, v in r.items() if k in fields}) for r in rows]

    async def replay_delivery(self, subscription_id: str, id: str) -> bool:
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            seq = await conn.fetchval(
                "select seq from deliveries where id = $1 and subscription_id = $2"
                " and state = any($3::text[]) for update",
                id,
                subscription_id,
                list(FINISHED),
            )
            if seq is None:
                return False
            await conn.execute("delete from delivery_bodies where delivery_seq = $1", seq)
            await conn.execute(
                "update deliveries set state = 'pending', replayed_after = attempts,"
                " next_attempt_at = $1, updated_at = $1 where seq = $2",
                now,
                seq,
            )
            await conn.execute("select pg_notify($1, '')", DELIVERIES_CHANNEL)
        return True

    async def push_counts(self) -> dict[str, int]:
        rows = await self.pool.fetch("select state, count(*) as n from pushes group by state")
        return {str(row["state"]): int(row["n"]) for row in rows}

    async def delivery_activity(self, since: float, *, max_rows: int = 50_000) -> Activity:
        start = math.floor(since / 60) * 60
        buckets = int((time.time() - start) // 60) + 1
        delivered = [0] * buckets
        failed = [0] * buckets
        latencies: list[list[float]] = [[] for _ in range(buckets)]
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "select attempted_at, outcome from attempts order by id desc limit $1", max_rows
            )
            capped = len(rows) == max_rows and rows[-1]["attempted_at"] >= since
            for row in rows:
                attempted_at, outcome = row["attempted_at"], row["outcome"]
                if attempted_at < since - SKEW:
                    break
                if attempted_at < since:
                    continue
                index = min(int((attempted_at - start) // 60), buckets - 1)
                if outcome == "delivered":
                    delivered[index] += 1
                elif outcome != "skipped":
                    failed[index] += 1
            for row in await conn.fetch(
                "select d.delivered_at, d.delivered_at - p.received_at as seconds"
                " from deliveries d join events e on e.seq = d.event_seq"
                " join pushes p on p.id = e.push_id"
                " where d.state = 'delivered' and d.delivered_at >= $1 and d.replayed_after = 0"
                " order by d.delivered_at desc limit $2",
                since,
                max_rows,
            ):
                index = min(int((row["delivered_at"] - start) // 60), buckets - 1)
                latencies[index].append(max(row["seconds"], 0.0) * 1000)
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


async def _health(conn: Conn, subscription_id: str, since: float) -> SubscriptionHealth:
    last: dict[str, object] = {}
    attempts = delivered = 0
    # Newest first along the (subscription_id, id) index, stopping at the window's start.
    async with conn.transaction():  # a cursor needs one
        async for row in conn.cursor(
            "select attempted_at, outcome, status, error from attempts"
            " where subscription_id = $1 order by id desc",
            subscription_id,
        ):
            if not last:
                last = dict(row.items())
            if row["attempted_at"] < since - SKEW:
                break
            if row["attempted_at"] < since or row["outcome"] == "skipped":
                continue
            attempts += 1
            delivered += row["outcome"] == "delivered"
    waiting = await conn.fetchval(
        "select count(*) from deliveries where subscription_id = $1"
        " and state in ('pending', 'leased')",
        subscription_id,
    )
    return SubscriptionHealth(
        last_attempt_at=last.get("attempted_at"),  # type: ignore[arg-type]
        last_outcome=last.get("outcome"),  # type: ignore[arg-type]
        last_status=last.get("status"),  # type: ignore[arg-type]
        last_error=last.get("error"),  # type: ignore[arg-type]
        attempts=attempts,
        delivered=delivered,
        waiting=int(waiting),
    )
