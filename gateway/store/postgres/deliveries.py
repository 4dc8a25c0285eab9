"""Deliveries in PostgreSQL: claims shared by every process, settlements, replay and pruning.

The per-subscription concurrency limit holds across processes: a claim takes a transaction-scoped
advisory lock per subscription (``pg_try_advisory_xact_lock``: a subscription another process is
claiming for right now is simply passed over this round), then counts the subscription's unexpired
leases in the database, whoever holds them, and leases no more than the limit minus that count.
Order per booking follows from the same lock: no two claims for one subscription (whose order
keys all begin with its id) run at once, and a message waits while an earlier one of its order key
is pending or leased. Leases of a process that died expire and are claimed like any due message.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import orjson

from gateway.models import AttemptRecord, DeliveryRecord, DeliveryState
from gateway.store.interface import ClaimRoom
from gateway.store.postgres.base import DELIVERIES_CHANNEL, Conn, PostgresBase, record
from gateway.store.sqlite.base import _ts, new_id, utcnow

CLAIM_LOCK = 741_102  # pg_try_advisory_xact_lock(CLAIM_LOCK, hashtext(subscription_id))

# The subscriptions with messages queued or in flight, each with its earliest queued message's
# next_attempt_at (a leased message's is its lease expiry): a loose index scan, one seek per
# subscription however deep its backlog.
SUBSCRIPTIONS_QUEUED = """
with recursive subs(id) as (
    (select subscription_id from deliveries where state in ('pending', 'leased')
     order by subscription_id limit 1)
    union all
    select (select d.subscription_id from deliveries d
            where d.state in ('pending', 'leased') and d.subscription_id > subs.id
            order by d.subscription_id limit 1)
    from subs where subs.id is not null
)
select id, (
    select next_attempt_at from deliveries
    where subscription_id = subs.id and state in ('pending', 'leased')
    order by next_attempt_at, seq limit 1
) as earliest
from subs where id is not null
"""

NEXT_DUE = f"select min(earliest) from ({SUBSCRIPTIONS_QUEUED}) as queued"

# Unexpired leases per subscription, held by any process.
IN_FLIGHT = """
select subscription_id, count(*) as leased from deliveries
where subscription_id = any($1::text[]) and state = 'leased' and next_attempt_at > $2
group by subscription_id
"""

# Each locked subscription's oldest due messages, up to its room, each only if no earlier message
# of its order key is unfinished (unless that one is older than max_wait); rows another process
# holds locked are skipped, never waited for. The event's data comes back with each message.
CLAIM = """
with claimed as (
    update deliveries set state = 'leased', lease_token = $3, lease_expires_at = $4,
        next_attempt_at = $4, updated_at = $5
    where seq in (
        select c.seq from unnest($1::text[], $2::int[]) as w(subscription_id, room)
        cross join lateral (
            select d.seq from deliveries d
            where d.subscription_id = w.subscription_id and d.state in ('pending', 'leased')
              and d.next_attempt_at <= $5
              and not exists (
                select 1 from deliveries e
                where e.order_key = d.order_key and e.seq < d.seq
                  and e.state in ('pending', 'leased') and e.created_at > $5 - $6
              )
            order by d.next_attempt_at, d.seq limit w.room
            for update skip locked
        ) as c
    )
    returning *
)
select claimed.*, events.data as event_data from claimed join events on events.seq = claimed.event_seq
order by claimed.next_attempt_at, claimed.seq
"""


class DeliveryStore(PostgresBase):
    async def claim_deliveries(
        self, room: ClaimRoom, lease_seconds: float, *, ordering_max_wait: float
    ) -> list[DeliveryRecord]:
        """Lease due deliveries within ``room``; the per-subscription limit counts every
        process's leases. Subscriptions with the oldest due message go first."""
        if room.total <= 0:
            return []
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            waiting = sorted(
                (row["earliest"], row["id"])
                for row in await conn.fetch(SUBSCRIPTIONS_QUEUED)
                if row["earliest"] <= now and room.free(row["id"]) > 0
            )
            if not waiting:
                return []
            candidates = [subscription_id for _, subscription_id in waiting]
            locked = [
                row["id"]
                for row in await conn.fetch(
                    "select id from unnest($1::text[]) with ordinality as t(id, n)"
                    " where pg_try_advisory_xact_lock($2, hashtext(id)) order by n",
                    candidates,
                    CLAIM_LOCK,
                )
            ]
            if not locked:
                return []
            leased = {
                row["subscription_id"]: row["leased"]
                for row in await conn.fetch(IN_FLIGHT, locked, now)
            }
            names: list[str] = []
            rooms: list[int] = []
            left = room.total
            for subscription_id in locked:
                free = min(
                    room.free(subscription_id),
                    room.per_subscription - leased.get(subscription_id, 0),
                    left,
                )
                if free > 0:
                    names.append(subscription_id)
                    rooms.append(free)
                    left -= free
                if left <= 0:
                    break
            if not names:
                return []
            rows = await conn.fetch(
                CLAIM,
                names,
                rooms,
                new_id("lease"),
                now + lease_seconds,
                now,
                ordering_max_wait,
            )
        return [_delivery(row) for row in rows]

    async def next_delivery_due(self) -> float | None:
        value = await self.pool.fetchval(NEXT_DUE)
        return None if value is None else float(value)

    async def settle_delivery(
        self,
        delivery: DeliveryRecord,
        attempt: AttemptRecord,
        *,
        state: DeliveryState,
        next_attempt_at: float | None = None,
        body: bytes | None = None,
        disable_reason: str | None = None,
        disable_after: float | None = None,
    ) -> bool:
        """Record an attempt and the delivery's new state, fenced by its lease; track how long the
        subscription has been failing and disable it (410 Gone at once, or failing too long)."""
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "update deliveries set state = $1, attempts = attempts + 1,"
                " next_attempt_at = coalesce($2, next_attempt_at), lease_token = null,"
                " lease_expires_at = null, body = coalesce(body, $3), last_status = $4,"
                " last_error = $5, updated_at = $6,"
                " delivered_at = case when $1 = 'delivered' then $6 else delivered_at end"
                " where id = $7 and lease_token = $8",
                state,
                next_attempt_at,
                body,
                attempt.status,
                attempt.error,
                now,
                delivery.id,
                delivery.lease_token,
            )
            if status != "UPDATE 1":
                return False
            row = attempt.model_dump()
            columns = ", ".join(row)
            marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
            await conn.execute(f"insert into attempts ({columns}) values ({marks})", *row.values())
            await _track_health(
                conn, delivery.subscription_id, state, now, disable_reason, disable_after
            )
        return True

    async def skip_delivery(self, delivery: DeliveryRecord, reason: str) -> None:
        await self.pool.execute(
            "update deliveries set state = 'skipped', last_error = $1, lease_token = null,"
            " lease_expires_at = null, updated_at = $2 where id = $3 and lease_token = $4",
            reason,
            time.time(),
            delivery.id,
            delivery.lease_token,
        )

    async def release_deliveries(self, deliveries: list[DeliveryRecord]) -> None:
        """Give leased deliveries back (shutdown), so any process sends them at once."""
        if not deliveries:
            return
        await self.pool.execute(
            "update deliveries set state = 'pending', lease_token = null,"
            " lease_expires_at = null, next_attempt_at = $1"
            " from unnest($2::text[], $3::text[]) as r(id, token)"
            " where deliveries.id = r.id and deliveries.lease_token = r.token",
            time.time(),
            [d.id for d in deliveries],
            [d.lease_token for d in deliveries],
        )

    async def list_attempts(
        self,
        subscription_id: str,
        *,
        state: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[tuple[int, AttemptRecord, str]]:
        sql = (
            "select a.*, d.state as delivery_state from attempts a"
            " join deliveries d on d.id = a.delivery_id where a.subscription_id = $1"
        )
        params: list[Any] = [subscription_id]
        if state is not None:
            params.append(state)
            sql += f" and d.state = ${len(params)}"
        if before is not None:
            params.append(before)
            sql += f" and a.id < ${len(params)}"
        params.append(limit)
        sql += f" order by a.id desc limit ${len(params)}"
        out = []
        for found in await self.pool.fetch(sql, *params):
            row = record(found)
            state_now = row.pop("delivery_state")
            attempt_id = row.pop("id")
            out.append((attempt_id, AttemptRecord.model_validate(row), state_now))
        return out

    async def list_deliveries(
        self, subscription_id: str, *, state: str | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        if state is None:
            rows = await self.pool.fetch(
                "select * from deliveries where subscription_id = $1 order by seq desc limit $2",
                subscription_id,
                limit,
            )
        else:
            rows = await self.pool.fetch(
                "select * from deliveries where subscription_id = $1 and state = $2"
                " order by seq desc limit $3",
                subscription_id,
                state,
                limit,
            )
        return [_delivery(row) for row in rows]

    async def replay_deliveries(self, subscription_id: str, since: float) -> int:
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "update deliveries set state = 'pending', replayed_after = attempts,"
                " next_attempt_at = $1, updated_at = $1, body = null"
                " where subscription_id = $2 and created_at >= $3"
                " and state in ('delivered', 'dead', 'skipped')",
                now,
                subscription_id,
                since,
            )
            count = int(status.split()[-1])
            if count:
                await conn.execute("select pg_notify($1, '')", DELIVERIES_CHANNEL)
        return count

    async def replay_progress(self, subscription_id: str, since: float) -> tuple[int, int]:
        row = await self.pool.fetchrow(
            "select count(*) filter (where state in ('pending', 'leased')) as waiting,"
            " count(*) filter (where state in ('delivered', 'dead')) as finished"
            " from deliveries where subscription_id = $1 and created_at >= $2",
            subscription_id,
            since,
        )
        assert row is not None
        return int(row["waiting"]), int(row["finished"])

    async def prune_delivered(self, older_than: float) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "delete from attempts where delivery_id in (select id from deliveries"
                " where state = 'delivered' and delivered_at < $1)",
                older_than,
            )
            status = await conn.execute(
                "delete from deliveries where state = 'delivered' and delivered_at < $1",
                older_than,
            )
            # Events no message refers to any more are history nobody can replay.
            await conn.execute(
                "delete from events where created_at < $1 and not exists"
                " (select 1 from deliveries d where d.event_seq = events.seq)",
                older_than,
            )
        return int(status.split()[-1])

    async def queue_stats(self) -> dict[str, float]:
        row = await self.pool.fetchrow(
            "select count(*) as depth, min(created_at) as oldest from deliveries"
            " where state in ('pending', 'leased')"
        )
        assert row is not None
        oldest = row["oldest"]
        return {
            "depth": float(row["depth"]),
            "oldest_age": 0.0 if oldest is None else max(time.time() - oldest, 0.0),
        }


def _delivery(found: asyncpg.Record) -> DeliveryRecord:
    row = record(found)
    text = row.pop("event_data", None)
    fields = {k: row[k] for k in DeliveryRecord.model_fields if k in row and k != "data"}
    return DeliveryRecord(**fields, data=orjson.loads(text) if text else {})


async def _track_health(
    conn: Conn,
    subscription_id: str,
    state: str,
    now: float,
    disable_reason: str | None,
    disable_after: float | None,
) -> None:
    """A delivered message clears the failing streak; a dead one starts it (if not running) and
    disables the subscription once it has lasted ``disable_after`` seconds."""
    if state == "delivered":
        await conn.execute(
            "update subscriptions set failing_since = null"
            " where id = $1 and failing_since is not null",
            subscription_id,
        )
        return
    if state == "dead":
        failing_since = await conn.fetchval(
            "update subscriptions set failing_since = coalesce(failing_since, $1) where id = $2"
            " returning failing_since",
            now,
            subscription_id,
        )
        if (
            disable_after is not None
            and disable_reason is None
            and failing_since is not None
            and now - failing_since >= disable_after
        ):
            disable_reason = f"failing continuously for {disable_after / 3600:g} hours"
    if disable_reason is not None:
        await conn.execute(
            "update subscriptions set active = 0, disabled_reason = $1, updated_at = $2"
            " where id = $3",
            disable_reason,
            _ts(utcnow()),
            subscription_id,
        )
