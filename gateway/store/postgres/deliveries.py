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

import dataclasses
import time
from typing import Any

import asyncpg
import orjson

from gateway.models import AttemptRecord, DeliveryRecord
from gateway.store.interface import ClaimRoom, Settlement
from gateway.store.postgres.base import DELIVERIES_CHANNEL, Conn, PostgresBase, record, text
from gateway.store.replay import missed_events
from gateway.store.sqlite.base import _ts, new_id, utcnow

CLAIM_LOCK = 741_102  # pg_try_advisory_xact_lock(CLAIM_LOCK, hashtext(subscription_id))
TENANT_CLAIM_LOCK = 741_104  # pg_try_advisory_xact_lock(TENANT_CLAIM_LOCK, hashtext(tenant))

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

# Unexpired leases per tenant, held by any process.
TENANT_IN_FLIGHT = """
select s.tenant, count(*) as leased from deliveries d
join subscriptions s on s.id = d.subscription_id
where s.tenant = any($1::text[]) and d.state = 'leased' and d.next_attempt_at > $2
group by s.tenant
"""

# Each locked subscription's oldest due messages, up to its room, each only if no earlier message
# of its order key is unfinished (unless that one is older than max_wait); rows another process
# holds locked are skipped, never waited for. Locked until the claim commits: the claim then
# leases those its room (shared with the tenant's other subscriptions) takes.
DUE = """
select w.subscription_id, c.seq from unnest($1::text[], $2::int[]) with ordinality
    as w(subscription_id, room, n)
cross join lateral (
    select d.seq, d.next_attempt_at from deliveries d
    where d.subscription_id = w.subscription_id and d.state in ('pending', 'leased')
      and d.next_attempt_at <= $3
      and not exists (
        select 1 from deliveries e
        where e.order_key = d.order_key and e.seq < d.seq
          and e.state in ('pending', 'leased') and e.created_at > $3 - $4
      )
    order by d.next_attempt_at, d.seq limit w.room
    for update skip locked
) as c
order by w.n, c.next_attempt_at, c.seq
"""

# Leases the chosen messages; the event's data comes back with each.
CLAIM = """
with claimed as (
    update deliveries set state = 'leased', lease_token = $2, lease_expires_at = $3,
        next_attempt_at = $3, updated_at = $4
    where seq = any($1::bigint[])
    returning *
)
select claimed.*, events.event, events.data as event_data, b.body
from claimed join events on events.seq = claimed.event_seq
left join delivery_bodies b on claimed.attempts > 0 and b.delivery_seq = claimed.seq
order by claimed.next_attempt_at, claimed.seq
"""


class DeliveryStore(PostgresBase):
    async def claim_deliveries(
        self, room: ClaimRoom, lease_seconds: float, *, ordering_max_wait: float
    ) -> list[DeliveryRecord]:
        """Lease due deliveries within ``room``; the per-subscription and per-tenant limits count
        every process's leases. Subscriptions with the oldest due message go first."""
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
            if room.per_tenant is not None:
                locked, room = await _tenants_room(conn, room, locked, now)
            if not locked:
                return []
            leased = {
                row["subscription_id"]: row["leased"]
                for row in await conn.fetch(IN_FLIGHT, locked, now)
            }
            # Each subscription's due messages, as many as it could take on its own...
            rooms = {
                subscription_id: min(
                    room.free(subscription_id),
                    room.per_subscription - leased.get(subscription_id, 0),
                    room.total,
                )
                for subscription_id in locked
            }
            names = [name for name in locked if rooms[name] > 0]
            due: dict[str, list[int]] = {}
            for row in await conn.fetch(
                DUE, names, [rooms[name] for name in names], now, ordering_max_wait
            ):
                due.setdefault(row["subscription_id"], []).append(row["seq"])
            # ...then what the room takes of them, in the same order, counting what each took
            # (not what it could have: that would leave the room to a few subscriptions).
            chosen: list[int] = []
            left = room.total
            tally = room.tally()  # this process's room, a tenant's subscriptions sharing its part
            for subscription_id in names:
                take = min(len(due.get(subscription_id, ())), tally.free(subscription_id), left)
                if take > 0:
                    chosen += due[subscription_id][:take]
                    tally.took(subscription_id, take)
                    left -= take
                if left <= 0:
                    break
            if not chosen:
                return []
            rows = await conn.fetch(CLAIM, chosen, new_id("lease"), now + lease_seconds, now)
        return [_delivery(row) for row in rows]

    async def next_delivery_due(self) -> float | None:
        value = await self.pool.fetchval(NEXT_DUE)
        return None if value is None else float(value)

    async def settle_deliveries(self, settlements: list[Settlement]) -> list[bool]:
        """Record attempts and the deliveries' new states in one transaction, each fenced by its
        lease (False for one whose lease was lost); track how long a subscription has been failing
        and disable it (410 Gone at once, or failing too long). A handful of set-based statements
        whatever the batch's size."""
        if not settlements:
            return []
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            held = {
                row["seq"]
                for row in await conn.fetch(
                    "update deliveries d set state = s.state, attempts = d.attempts + 1,"
                    " next_attempt_at = coalesce(s.next_at, d.next_attempt_at),"
                    " lease_token = null, lease_expires_at = null, last_status = s.status,"
                    " last_error = s.error, updated_at = $8,"
                    " delivered_at = case when s.state = 'delivered' then $8 else d.delivered_at end"
                    " from unnest($1::bigint[], $2::text[], $3::text[], $4::float8[], $5::int[],"
                    " $6::text[], $7::int[]) as s(seq, token, state, next_at, status, error, n)"
                    " where d.seq = s.seq and d.lease_token = s.token returning d.seq",
                    [x.delivery.seq for x in settlements],
                    [x.delivery.lease_token for x in settlements],
                    [x.state for x in settlements],
                    [x.next_attempt_at for x in settlements],
                    [x.attempt.status for x in settlements],
                    [text(x.attempt.error) for x in settlements],
                    list(range(len(settlements))),
                    now,
                )
            }
            settled = [x for x in settlements if x.delivery.seq in held]
            if settled:
                await _record_attempts(conn, settled)
                await _keep_bodies(conn, settled)
                await _track_health(conn, settled, now)
        return [x.delivery.seq in held for x in settlements]

    async def skip_delivery(self, delivery: DeliveryRecord, reason: str) -> None:
        await self.pool.execute(
            "update deliveries set state = 'skipped', last_error = $1, lease_token = null,"
            " lease_expires_at = null, updated_at = $2 where seq = $3 and lease_token = $4",
            text(reason),
            time.time(),
            delivery.seq,
            delivery.lease_token,
        )
        await self.pool.execute("delete from delivery_bodies where delivery_seq = $1", delivery.seq)

    async def release_deliveries(self, deliveries: list[DeliveryRecord]) -> None:
        """Give leased deliveries back (shutdown), so any process sends them at once."""
        if not deliveries:
            return
        await self.pool.execute(
            "update deliveries set state = 'pending', lease_token = null,"
            " lease_expires_at = null, next_attempt_at = $1"
            " from unnest($2::bigint[], $3::text[]) as r(seq, token)"
            " where deliveries.seq = r.seq and deliveries.lease_token = r.token",
            time.time(),
            [d.seq for d in deliveries],
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
            "select a.*, d.id as delivery_id, d.state as delivery_state from attempts a"
            " join deliveries d on d.seq = a.delivery_seq where a.subscription_id = $1"
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
            del row["delivery_seq"]
            out.append((attempt_id, AttemptRecord.model_validate(row), state_now))
        return out

    async def list_deliveries(
        self, subscription_id: str, *, state: str | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        sql = (
            "select d.*, e.event from deliveries d join events e on e.seq = d.event_seq"
            " where d.subscription_id = $1"
        )
        params: list[Any] = [subscription_id]
        if state is not None:
            params.append(state)
            sql += f" and d.state = ${len(params)}"
        params.append(limit)
        sql += f" order by d.seq desc limit ${len(params)}"
        return [_delivery(row, with_data=False) for row in await self.pool.fetch(sql, *params)]

    async def replay_deliveries(self, subscription_id: str, since: float) -> int:
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            # A replay renders the message afresh (the subscription may have changed since).
            await conn.execute(
                "delete from delivery_bodies where delivery_seq in (select seq from deliveries"
                " where subscription_id = $1 and created_at >= $2"
                " and state in ('delivered', 'dead', 'skipped'))",
                subscription_id,
                since,
            )
            status = await conn.execute(
                "update deliveries set state = 'pending', replayed_after = attempts,"
                " next_attempt_at = $1, updated_at = $1"
                " where subscription_id = $2 and created_at >= $3"
                " and state in ('delivered', 'dead', 'skipped')",
                now,
                subscription_id,
                since,
            )
            count = int(status.split()[-1]) + await _missed_messages(
                conn, subscription_id, since, now
            )
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

    async def log_bytes(self) -> int | None:
        return None  # PostgreSQL keeps and recycles its own WAL

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


def _delivery(found: asyncpg.Record, *, with_data: bool = True) -> DeliveryRecord:
    """A row as the worker gets it (our own row: built without validation)."""
    row = record(found)
    text = row.pop("event_data", None)
    return DeliveryRecord.model_construct(
        seq=row["seq"],
        id=row["id"],
        event_seq=row["event_seq"],
        subscription_id=row["subscription_id"],
        event=row["event"],
        order_key=row["order_key"],
        state=row["state"],
        attempts=row["attempts"],
        replayed_after=row["replayed_after"],
        next_attempt_at=row["next_attempt_at"],
        lease_token=row["lease_token"],
        body=row.get("body"),
        last_status=row["last_status"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        delivered_at=row["delivered_at"],
        data=orjson.loads(text) if with_data and text else {},
    )


async def _tenants_room(
    conn: Conn, room: ClaimRoom, locked: list[str], now: float
) -> tuple[list[str], ClaimRoom]:
    """The per-tenant limit across processes, as the per-subscription one: a tenant another
    process is claiming for right now is passed over this round (its subscriptions dropped from
    ``locked``); for the others, what the tenant has in flight counts every process's unexpired
    leases (or this process's own count, if higher: a lease can expire while its attempt lasts)."""
    tenants = sorted({room.tenant_of[s] for s in locked if s in room.tenant_of})
    if not tenants:
        return locked, room
    held = {
        row["t"]
        for row in await conn.fetch(
            "select t from unnest($1::text[]) as t"
            " where pg_try_advisory_xact_lock($2, hashtext(t))",
            tenants,
            TENANT_CLAIM_LOCK,
        )
    }
    locked = [s for s in locked if s not in room.tenant_of or room.tenant_of[s] in held]
    counts = {
        row["tenant"]: int(row["leased"])
        for row in await conn.fetch(TENANT_IN_FLIGHT, sorted(held), now)
    }
    in_flight = dict(room.tenant_in_flight)
    for tenant, count in counts.items():
        in_flight[tenant] = max(in_flight.get(tenant, 0), count)
    return locked, dataclasses.replace(room, tenant_in_flight=in_flight)


async def _missed_messages(conn: Conn, subscription_id: str, since: float, now: float) -> int:
    """Queue a message for each event since ``since`` the subscription matches but got none
    (it was disabled), in event order; for availability only each day's latest. An event is left
    out when the subscription has a message for it or for a later event of its subject (the
    SQLite store's rule)."""
    found = await conn.fetchrow(
        "select event, products from subscriptions where id = $1 and deleted_at is null",
        subscription_id,
    )
    if found is None:
        return 0
    event, products = found["event"], set(orjson.loads(found["products"]))
    prefix = len(subscription_id) + 1  # order_key is "<subscription id>|<subject>"
    latest: dict[str, int] = {}
    for row in await conn.fetch(
        "select order_key, max(event_seq) as seq from deliveries where subscription_id = $1"
        " group by order_key",
        subscription_id,
    ):
        latest[row["order_key"][prefix:]] = row["seq"]
    events = await conn.fetch(
        "select seq, subject, product_id from events where event = $1 and created_at >= $2"
        " order by seq",
        event,
        since,
    )
    rows = [
        (seq, f"{subscription_id}|{subject}")
        for seq, subject in missed_events(
            ((r["seq"], r["subject"], r["product_id"]) for r in events), event, products, latest
        )
    ]
    if rows:
        await conn.execute(
            "insert into deliveries (id, event_seq, subscription_id, order_key, state,"
            " next_attempt_at, created_at, updated_at)"
            " select i, q, $4, k, 'pending', $5, $5, $5"
            " from unnest($1::text[], $2::bigint[], $3::text[]) with ordinality as t(i, q, k, n)"
            " order by n",
            [new_id("msg") for _ in rows],
            [seq for seq, _ in rows],
            [key for _, key in rows],
            subscription_id,
            now,
        )
    return len(rows)


async def _record_attempts(conn: Conn, settled: list[Settlement]) -> None:
    await conn.execute(
        "insert into attempts (delivery_seq, subscription_id, attempt, attempted_at, outcome,"
        " status, latency_ms, error, response)"
        " select * from unnest($1::bigint[], $2::text[], $3::int[], $4::float8[], $5::text[],"
        " $6::int[], $7::float8[], $8::text[], $9::text[])",
        [x.delivery.seq for x in settled],
        [x.delivery.subscription_id for x in settled],
        [x.attempt.attempt for x in settled],
        [x.attempt.attempted_at for x in settled],
        [x.attempt.outcome for x in settled],
        [x.attempt.status for x in settled],
        [x.attempt.latency_ms for x in settled],
        [text(x.attempt.error) for x in settled],
        [text(x.attempt.response) for x in settled],
    )


async def _keep_bodies(conn: Conn, settled: list[Settlement]) -> None:
    """A body is kept only while its message waits for another attempt (a retry sends the same
    bytes)."""
    keep = [x for x in settled if x.state == "pending" and x.body is not None]
    if keep:
        await conn.execute(
            "insert into delivery_bodies (delivery_seq, body)"
            " select * from unnest($1::bigint[], $2::bytea[]) on conflict do nothing",
            [x.delivery.seq for x in keep],
            [x.body for x in keep],
        )
    finished = [x.delivery.seq for x in settled if x.state != "pending" and x.delivery.attempts]
    if finished:
        await conn.execute(
            "delete from delivery_bodies where delivery_seq = any($1::bigint[])", finished
        )


async def _track_health(conn: Conn, settled: list[Settlement], now: float) -> None:
    """A delivered message clears its subscription's failing streak; a dead one starts it (if not
    running) and disables the subscription once it has lasted ``disable_after`` seconds; a
    ``disable_reason`` (410 Gone) disables it at once.

    With a dead message, the rows to change are locked first, in id order: two processes
    settling batches that touch the same subscriptions in other orders would otherwise deadlock,
    and the one PostgreSQL aborts would lose its whole batch (its messages sent again once their
    leases ran out). Delivered ones alone change in one statement, which locks in index order."""
    delivered = sorted({x.delivery.subscription_id for x in settled if x.state == "delivered"})
    failing = sorted(
        {
            x.delivery.subscription_id
            for x in settled
            if x.state == "dead" or x.disable_reason is not None
        }
    )
    if failing:
        await conn.execute(
            "select 1 from subscriptions where id = any($1::text[])"
            " or (id = any($2::text[]) and failing_since is not null) order by id for update",
            failing,
            delivered,
        )
    if delivered:
        await conn.execute(
            "update subscriptions set failing_since = null"
            " where id = any($1::text[]) and failing_since is not null",
            delivered,
        )
    for x in settled:
        if x.state != "dead" and x.disable_reason is None:
            continue
        reason = x.disable_reason
        if x.state == "dead":
            failing_since = await conn.fetchval(
                "update subscriptions set failing_since = coalesce(failing_since, $1)"
                " where id = $2 returning failing_since",
                now,
                x.delivery.subscription_id,
            )
            if (
                reason is None
                and x.disable_after is not None
                and failing_since is not None
                and now - failing_since >= x.disable_after
            ):
                reason = f"failing continuously for {x.disable_after / 3600:g} hours"
        if reason is not None:
            await conn.execute(
                "update subscriptions set active = 0, disabled_reason = $1, updated_at = $2"
                " where id = $3",
                reason,
                _ts(utcnow()),
                x.delivery.subscription_id,
            )
