"""Pushes in PostgreSQL: durable ingest, leases shared by every process, and fan-out.

Order per booking holds across processes: a push is leased only when no earlier push with its
``order_key`` is unfinished (claims check it under ``FOR UPDATE SKIP LOCKED``; a push leased at
insert first takes a transaction-scoped advisory lock on its order key, so two processes inserting
pushes of one booking at once see each other).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.models import NewEvent, PushRecord, PushState, RoomMapUpdate
from gateway.pipeline.diff import booking_diff, keep_cancellation_time
from gateway.pipeline.versions import is_older
from gateway.store.interface import HandOver
from gateway.store.lookups import booking_lookups
from gateway.store.postgres.base import (
    DELIVERIES_CHANNEL,
    PUSHES_CHANNEL,
    Conn,
    PostgresBase,
    dumps,
    record,
    text,
    without_nul,
)
from gateway.store.postgres.room_maps import write_room_maps
from gateway.store.sqlite.base import new_id
from gateway.store.sqlite.pushes import NEXT_DUE, PUSH_STATES, _push, list_pushes_sql

ORDER_LOCK = 741_101  # pg_advisory_xact_lock(ORDER_LOCK, hashtext(order_key))

CLAIM_PUSHES = """
update pushes set lease_token = $1, lease_expires_at = $2, next_attempt_at = $2,
    attempts = attempts + 1
where seq in (
    select p.seq from pushes p
    where p.state = 'accepted' and p.next_attempt_at <= $3
      and not exists (
        select 1 from pushes q
        where p.order_key is not null and q.order_key = p.order_key
          and q.state = 'accepted' and q.seq < p.seq
      )
    order by p.next_attempt_at, p.seq limit $4
    for update skip locked
)
returning *
"""


class PushStore(PostgresBase):
    async def insert_push(
        self,
        *,
        source: str,
        kind: str,
        payload: Any,
        dedupe_key: str | None,
        order_key: str | None,
        coalesce_key: str | None = None,
        state: PushState = "accepted",
        error: str | None = None,
        lease_seconds: float | None = None,
    ) -> tuple[PushRecord, bool]:
        """Store a push durably; (stored one, False) for a known dedupe key or a coalesce key
        still waiting. With ``lease_seconds`` a new push nothing is ahead of comes back leased."""
        now = time.time()
        coalesce_key, order_key = text(coalesce_key), text(order_key)
        row = _push_row(
            new_id("psh"), source, kind, payload, text(dedupe_key), order_key, coalesce_key, now
        )
        row.update(state=state, error=text(error))
        if state != "accepted":
            row["processed_at"] = now
        async with self.pool.acquire() as conn, conn.transaction():
            found = await _known(conn, source, row["dedupe_key"], coalesce_key)
            if found is not None:
                return found, False
            if lease_seconds is not None and state == "accepted":
                await _lease_new(conn, row, order_key, now + lease_seconds)
            found = await _insert(conn, row)
            if found is not None:
                return found, False
        return _push(row), True

    async def insert_processed_push(
        self,
        *,
        id: str,
        source: str,
        kind: str,
        payload: Any,
        dedupe_key: str | None,
        order_key: str | None,
        coalesce_key: str | None = None,
        events: list[NewEvent],
        note: str | None = None,
        room_maps: Sequence[RoomMapUpdate] = (),
        hand_over: HandOver | None = None,
    ) -> tuple[PushRecord, bool, int]:
        """``insert_push`` and ``complete_push`` in one transaction, for a push processed before
        it was stored (the interface says what each outcome means; ``hand_over`` leases none
        here, as in ``complete_push``)."""
        events = [_storable(event) for event in events]
        while True:
            try:
                return await self._insert_processed(
                    id,
                    source,
                    kind,
                    payload,
                    text(dedupe_key),
                    text(order_key),
                    text(coalesce_key),
                    events,
                    text(note),
                    room_maps,
                )
            except _StateRaced:
                continue  # the state is stored now, and locked by the next read: no loop

    async def _insert_processed(
        self,
        id: str,
        source: str,
        kind: str,
        payload: Any,
        dedupe_key: str | None,
        order_key: str | None,
        coalesce_key: str | None,
        events: list[NewEvent],
        note: str | None,
        room_maps: Sequence[RoomMapUpdate],
    ) -> tuple[PushRecord, bool, int]:
        now = time.time()
        row = _push_row(id, source, kind, payload, dedupe_key, order_key, coalesce_key, now)
        async with self.pool.acquire() as conn, conn.transaction():
            found = await _known(conn, source, row["dedupe_key"], coalesce_key)
            if found is not None:
                return found, False, 0
            if order_key is not None and await _ahead(conn, order_key):
                # An earlier push of its booking is unfinished: this one waits its turn, stored
                # as any other, and is processed again after that one.
                found = await _insert(conn, row)
                return (found, False, 0) if found is not None else (_push(row), True, 0)
            row.update(state="processed", attempts=1, processed_at=now, note=note)
            found = await _insert(conn, row)
            if found is not None:
                return found, False, 0
            created = await _store_outcome(conn, id, source, events, room_maps, now)
        return _push(row), True, created

    async def get_push(self, id: str) -> PushRecord | None:
        row = await self.pool.fetchrow("select * from pushes where id = $1", id)
        return _push(record(row)) if row is not None else None

    async def list_pushes(
        self, state: PushState | None = None, limit: int = 100
    ) -> list[PushRecord]:
        if state is not None and state not in PUSH_STATES:
            return []  # no push is in a state that doesn't exist (and none goes into the SQL)
        # The state written out (as SQLite's): a generic plan of a bound state could not use the
        # partial indexes of waiting and failed pushes.
        rows = await self.pool.fetch(list_pushes_sql(state, limit="$1"), limit)
        return [_push(record(row)) for row in rows]

    async def claim_pushes(self, limit: int, lease_seconds: float) -> list[PushRecord]:
        now = time.time()
        rows = await self.pool.fetch(CLAIM_PUSHES, new_id("lease"), now + lease_seconds, now, limit)
        return [_push(record(row)) for row in rows]

    async def next_push_due(self) -> float | None:
        value = await self.pool.fetchval(NEXT_DUE)  # the SQLite store's query
        return None if value is None else float(value)

    async def defer_push(self, id: str, lease_token: str, error: str, delay: float) -> bool:
        status = await self.pool.execute(
            "update pushes set error = $1, next_attempt_at = $2, lease_token = null,"
            " lease_expires_at = null where id = $3 and lease_token = $4 and state = 'accepted'",
            text(error),
            time.time() + delay,
            id,
            lease_token,
        )
        return status == "UPDATE 1"

    async def fail_push(self, id: str, lease_token: str | None, error: str) -> bool:
        sql = (
            "update pushes set state = 'failed', error = $1, processed_at = $2,"
            " lease_token = null, lease_expires_at = null where id = $3"
        )
        params: list[Any] = [text(error), time.time(), id]
        if lease_token is not None:
            sql += " and lease_token = $4"
            params.append(lease_token)
        return await self.pool.execute(sql, *params) == "UPDATE 1"

    async def replay_push(self, id: str) -> PushRecord | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "update pushes set state = 'accepted', attempts = 0, next_attempt_at = $1,"
                " lease_token = null, lease_expires_at = null, processed_at = null"
                " where id = $2 returning *",
                time.time(),
                id,
            )
            if row is not None:
                await conn.execute("select pg_notify($1, '')", PUSHES_CHANNEL)
        return _push(record(row)) if row is not None else None

    async def replay_failed_pushes(self, ids: list[str] | None = None) -> list[str]:
        sql = (
            "update pushes set state = 'accepted', attempts = 0, next_attempt_at = $1,"
            " lease_token = null, lease_expires_at = null, processed_at = null"
            " where state = 'failed'"
        )
        params: list[Any] = [time.time()]
        if ids is not None:
            sql += " and id = any($2::text[])"
            params.append(ids)
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(sql + " returning id", *params)
            if rows:
                await conn.execute("select pg_notify($1, '')", PUSHES_CHANNEL)
        return [row["id"] for row in rows]

    async def known_availability(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        # Keys as complete_push stores them (no NUL), answered under the keys asked for.
        asked = {text(key) or key: key for key in keys}
        rows = await self.pool.fetch(
            "select key, availability from availability_state where key = any($1::text[])",
            list(asked),
        )
        return {asked[row["key"]]: orjson.loads(row["availability"]) for row in rows}

    async def complete_push(
        self,
        id: str,
        lease_token: str,
        events: list[NewEvent],
        note: str | None = None,
        *,
        room_maps: Sequence[RoomMapUpdate] = (),
        hand_over: HandOver | None = None,
    ) -> int | None:
        """Events with their history, one delivery per matching subscription, and the push
        processed, in one transaction; the number of deliveries to send, or None when the lease
        was lost. Rows go in with a few set-based statements, however many events a push has.
        Every message is stored pending (``hand_over`` leases none here: the worker claims them)."""
        events = [_storable(event) for event in events]
        while True:
            try:
                return await self._complete(id, lease_token, events, text(note), room_maps)
            except _StateRaced:
                continue  # the state is stored now, and locked by the next read: no loop

    async def _complete(
        self,
        id: str,
        lease_token: str,
        events: list[NewEvent],
        note: str | None,
        room_maps: Sequence[RoomMapUpdate],
    ) -> int | None:
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            owner = await conn.fetchrow(
                "select lease_token, state, source from pushes where id = $1 for update", id
            )
            if owner is None or owner["lease_token"] != lease_token or owner["state"] != "accepted":
                return None
            created = await _store_outcome(conn, id, owner["source"], events, room_maps, now)
            await conn.execute(
                "update pushes set state = 'processed', processed_at = $1, note = $2,"
                " error = null, lease_token = null, lease_expires_at = null where id = $3",
                now,
                note,
                id,
            )
            return created


def _push_row(
    id: str,
    source: str,
    kind: str,
    payload: Any,
    dedupe_key: str | None,
    order_key: str | None,
    coalesce_key: str | None,
    now: float,
) -> dict[str, Any]:
    """A new push's row, accepted and unleased (keys already without NUL)."""
    return {
        "id": id,
        "source": source,
        "kind": kind,
        "dedupe_key": dedupe_key or id,
        "coalesce_key": coalesce_key,
        "order_key": order_key,
        "payload": dumps(payload),
        "state": "accepted",
        "error": None,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_token": None,
        "lease_expires_at": None,
        "received_at": now,
        "processed_at": None,
    }


async def _known(
    conn: Conn, source: str, dedupe_key: str, coalesce_key: str | None
) -> PushRecord | None:
    """The stored push a new one repeats: the same dedupe key, or the same coalesce key on one
    still waiting (unleased) to be processed."""
    found = await conn.fetchrow(
        "select * from pushes where source = $1 and dedupe_key = $2", source, dedupe_key
    )
    if found is None and coalesce_key is not None:
        found = await conn.fetchrow(
            "select * from pushes where source = $1 and coalesce_key = $2"
            " and state = 'accepted' and lease_token is null limit 1",
            source,
            coalesce_key,
        )
    return None if found is None else _push(record(found))


async def _insert(conn: Conn, row: dict[str, Any]) -> PushRecord | None:
    """Insert a new push; the stored one if another process stored the same push a moment ago
    (nothing inserted). A push left waiting to be claimed wakes every process's processor."""
    columns = ", ".join(row)
    marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    inserted = await conn.fetchval(
        f"insert into pushes ({columns}) values ({marks})"
        " on conflict (source, dedupe_key) do nothing returning seq",
        *row.values(),
    )
    if inserted is None:
        found = await conn.fetchrow(
            "select * from pushes where source = $1 and dedupe_key = $2",
            row["source"],
            row["dedupe_key"],
        )
        assert found is not None
        return _push(record(found))
    if row["state"] == "accepted" and row["lease_token"] is None:
        await conn.execute("select pg_notify($1, '')", PUSHES_CHANNEL)
    return None


async def _store_outcome(
    conn: Conn,
    push_id: str,
    source: str,
    events: list[NewEvent],
    room_maps: Sequence[RoomMapUpdate],
    now: float,
) -> int:
    """What processing a push produced: its room maps (``RoomMapConflict`` when one moved on),
    its events with their history, and their deliveries (every process's worker is told).
    Returns how many deliveries to send."""
    await write_room_maps(conn, room_maps, now)
    kept = await _with_history(conn, events, now)
    created = await _fan_out(conn, kept, push_id, source, now)
    if created:
        await conn.execute("select pg_notify($1, '')", DELIVERIES_CHANNEL)
    return created


def _storable(event: NewEvent) -> NewEvent:
    """The event with no NUL in what PostgreSQL stores as text or parses as JSON (a booking's
    state is read as jsonb): the booking a subscriber gets is the one compared and kept."""
    keys = (event.subject, event.product_id, event.option_id, event.state_key, event.revision)
    nul_in_keys = any(key is not None and "\x00" in key for key in keys)
    nul_in_booking = event.event == "booking_update" and "\\u0000" in dumps(event.data)
    if not nul_in_keys and not nul_in_booking:
        return event
    return event.model_copy(
        update={
            "subject": text(event.subject),
            "product_id": text(event.product_id),
            "option_id": text(event.option_id),
            "state_key": text(event.state_key),
            "revision": text(event.revision),
            "data": without_nul(event.data) if nul_in_booking else event.data,
        }
    )


class _StateRaced(Exception):
    """Another process stored a subject's first state while this transaction judged the subject
    new: start again (that state is read, and locked, this time)."""


async def _lease_new(
    conn: Conn, row: dict[str, Any], order_key: str | None, expires: float
) -> None:
    """Lease a push about to be inserted, as a claim would, if nothing is ahead of it."""
    if order_key is not None and await _ahead(conn, order_key):
        return
    row.update(
        lease_token=new_id("lease"),
        lease_expires_at=expires,
        next_attempt_at=expires,
        attempts=1,
    )


async def _ahead(conn: Conn, order_key: str) -> bool:
    """Whether a push of this order key (booking) is unfinished. The order key's advisory lock,
    held until commit, makes another process inserting a push of the booking wait for this one."""
    await conn.execute("select pg_advisory_xact_lock($1, hashtext($2))", ORDER_LOCK, order_key)
    ahead = await conn.fetchval(
        "select 1 from pushes where order_key = $1 and state = 'accepted' limit 1", order_key
    )
    return ahead is not None


async def _with_history(
    conn: Conn, events: list[NewEvent], now: float
) -> list[tuple[NewEvent, dict[str, Any]]]:
    """Each event with its body data and what the previous state of its subject says (the booking
    ``diff``); events that change nothing a subscriber would see are dropped. The states are read
    in one query and written in one, in key order (so two processes never deadlock on them).

    A state read is locked (``for update``) until commit, but a subject with no state has no row
    to lock: two processes may both judge it new. Its first state is therefore inserted only if
    still absent; if another process stored one meanwhile, ``_StateRaced`` rolls back to start
    again (else an older booking version, judged against nothing, would be sent after and
    overwrite the newer one)."""
    booking_keys = sorted({e.state_key for e in events if e.event == "booking_update"})
    availability_keys = sorted({e.state_key for e in events if e.event != "booking_update"})
    bookings: dict[str, tuple[str | None, str | None, Any]] = {}
    if booking_keys:
        for row in await conn.fetch(
            "select key, revision, version, booking from booking_state"
            " where key = any($1::text[]) order by key for update",
            booking_keys,
        ):
            bookings[row["key"]] = (
                row["revision"],
                row["version"],
                orjson.loads(row["booking"]),
            )
    availability: dict[str, Any] = {}
    if availability_keys:
        for row in await conn.fetch(
            "select key, availability from availability_state"
            " where key = any($1::text[]) order by key for update",
            availability_keys,
        ):
            availability[row["key"]] = orjson.loads(row["availability"])

    # The keys that had state when read (and are locked): only these may be overwritten.
    read_bookings, read_availability = list(bookings), list(availability)
    kept: list[tuple[NewEvent, dict[str, Any]]] = []
    booking_writes: dict[str, tuple[str | None, str | None, Any]] = {}
    version_writes: dict[str, tuple[str | None, str | None]] = {}
    availability_writes: dict[str, Any] = {}
    for event in events:
        if event.event == "booking_update":
            booking = event.data["booking"]
            known = bookings.get(event.state_key)
            if known is not None and event.revision is not None and known[0] == event.revision:
                continue
            if known is not None and is_older(event.version, known[1]):
                continue  # an older version of the booking, delivered late by the PMS
            previous = known[2] if known is not None else None
            booking = keep_cancellation_time(previous, booking)
            diff = booking_diff(previous, booking)
            version = None if event.version is None else str(event.version)
            if known is not None and not diff:
                # Nothing to send, but this version is the newest seen: an older one arriving
                # later must still be judged stale against it (the booking sent stays as it was).
                bookings[event.state_key] = (event.revision, version or known[1], known[2])
                if event.state_key in booking_writes:
                    booking_writes[event.state_key] = bookings[event.state_key]
                else:
                    version_writes[event.state_key] = bookings[event.state_key][:2]
                continue
            bookings[event.state_key] = (event.revision, version, booking)
            booking_writes[event.state_key] = bookings[event.state_key]
            version_writes.pop(event.state_key, None)
            kept.append((event, {"booking": booking, "diff": diff}))
            continue
        value = event.data["availability"]
        if event.only_if_changed and availability.get(event.state_key) == value:
            continue
        availability[event.state_key] = value
        availability_writes[event.state_key] = value
        kept.append(
            (
                event,
                {
                    "availability": value,
                    "productId": event.product_id,
                    "optionId": event.option_id,
                },
            )
        )
    if booking_writes:
        keys = sorted(booking_writes)
        lookups = [booking_lookups(booking_writes[k][2]) for k in keys]
        stored = await conn.fetch(
            "insert into booking_state (key, revision, version, booking, updated_at, uuid,"
            " supplier_reference, reseller_reference, stay_end)"
            " select k, r, v, b, $5, u, sr, rr, se from unnest($1::text[], $2::text[],"
            " $3::text[], $4::text[], $7::text[], $8::text[], $9::text[], $10::text[])"
            " as t(k, r, v, b, u, sr, rr, se) on conflict (key) do update"
            " set revision = excluded.revision, version = excluded.version,"
            " booking = excluded.booking, updated_at = excluded.updated_at,"
            " uuid = excluded.uuid, supplier_reference = excluded.supplier_reference,"
            " reseller_reference = excluded.reseller_reference, stay_end = excluded.stay_end"
            " where booking_state.key = any($6::text[]) returning key",
            keys,
            [booking_writes[k][0] for k in keys],
            [booking_writes[k][1] for k in keys],
            [dumps(booking_writes[k][2]) for k in keys],
            now,
            read_bookings,
            *(list(column) for column in zip(*lookups, strict=True)),
        )
        if len(stored) != len(keys):
            raise _StateRaced
    if version_writes:
        keys = sorted(version_writes)
        await conn.execute(
            "update booking_state set revision = t.r, version = t.v"
            " from unnest($1::text[], $2::text[], $3::text[]) as t(k, r, v)"
            " where booking_state.key = t.k",
            keys,
            [version_writes[k][0] for k in keys],
            [version_writes[k][1] for k in keys],
        )
    if availability_writes:
        keys = sorted(availability_writes)
        stored = await conn.fetch(
            "insert into availability_state (key, availability, updated_at)"
            " select k, a, $3 from unnest($1::text[], $2::text[]) as t(k, a)"
            " on conflict (key) do update set availability = excluded.availability,"
            " updated_at = excluded.updated_at"
            " where availability_state.key = any($4::text[]) returning key",
            keys,
            [dumps(availability_writes[k]) for k in keys],
            now,
            read_availability,
        )
        if len(stored) != len(keys):
            raise _StateRaced
    return kept


async def _subscribers(conn: Conn) -> dict[str, list[tuple[str, list[str]]]]:
    """The active subscriptions by event: a disabled one gets no messages (a replay once it is
    back on sends what it missed)."""
    by_event: dict[str, list[tuple[str, list[str]]]] = {}
    for row in await conn.fetch(
        "select id, event, products from subscriptions where deleted_at is null and active = 1"
        " order by created_at, id"
    ):
        by_event.setdefault(row["event"], []).append((row["id"], orjson.loads(row["products"])))
    return by_event


async def _fan_out(
    conn: Conn,
    kept: list[tuple[NewEvent, dict[str, Any]]],
    push_id: str,
    source: str,
    now: float,
) -> int:
    """Store the events and one delivery per active subscription whose event and products match; a
    newer availability for the same subject supersedes one still pending. Returns how many
    deliveries are to be sent."""
    if not kept:
        return 0
    event_ids = [new_id("evt") for _ in kept]
    seqs = await conn.fetch(
        "insert into events (id, push_id, source, event, subject, product_id, option_id, data,"
        " created_at) select i, $2, $3, e, s, p, o, d, $4 from"
        " unnest($1::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])"
        " with ordinality as t(i, e, s, p, o, d, n) order by n returning id, seq",
        event_ids,
        push_id,
        source,
        now,
        [event.event for event, _ in kept],
        [event.subject for event, _ in kept],
        [event.product_id for event, _ in kept],
        [event.option_id for event, _ in kept],
        [dumps(data) for _, data in kept],
    )
    seq_of = {row["id"]: row["seq"] for row in seqs}
    subscribers = await _subscribers(conn)
    # Each message: id, event seq, subscription, order key, state.
    messages: list[tuple[str, int, str, str, str]] = []
    superseding: list[str] = []
    latest: dict[str, int] = {}  # order key -> index in messages of its newest pending one
    to_send = 0
    for event_id, (event, _) in zip(event_ids, kept, strict=True):
        for subscription_id, products in subscribers.get(event.event, []):
            if "*" not in products and event.product_id not in products:
                continue
            order_key = f"{subscription_id}|{event.subject}"
            if event.event == "availability_update":
                superseding.append(order_key)
                earlier = latest.get(order_key)
                if earlier is not None:  # the same subject twice in one push: the last one wins
                    messages[earlier] = (*messages[earlier][:4], "superseded")
                    to_send -= 1
            to_send += 1
            latest[order_key] = len(messages)
            messages.append(
                (new_id("msg"), seq_of[event_id], subscription_id, order_key, "pending")
            )
    if superseding:
        await conn.execute(
            "update deliveries set state = 'superseded', updated_at = $1"
            " where order_key = any($2::text[]) and state = 'pending'",
            now,
            sorted(set(superseding)),
        )
    if messages:
        columns = list(zip(*messages, strict=True))
        await conn.execute(
            "insert into deliveries (id, event_seq, subscription_id, order_key, state,"
            " next_attempt_at, created_at, updated_at)"
            " select i, q, s, k, st, $6, $6, $6 from"
            " unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])"
            " with ordinality as t(i, q, s, k, st, n) order by n",
            *[list(column) for column in columns],
            now,
        )
    return to_send
