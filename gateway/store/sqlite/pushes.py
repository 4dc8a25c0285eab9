"""Pushes in SQLite: durable ingest, leases, and turning processed pushes into events and
deliveries."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, get_args

import orjson
from sqlite_utils import Database

from gateway.models import (
    DeliveryRecord,
    NewEvent,
    PushRecord,
    PushState,
    RoomMapUpdate,
    trusted,
)
from gateway.pipeline.diff import booking_diff, keep_cancellation_time
from gateway.pipeline.versions import is_older
from gateway.store.interface import HandOver
from gateway.store.lookups import booking_lookups
from gateway.store.sqlite.base import (
    SQLiteBase,
    _chunks,
    _dumps,
    _insert,
    _insert_sql,
    new_id,
)
from gateway.store.sqlite.deliveries import FreshLeases
from gateway.store.sqlite.room_maps import write_room_maps

# Leases due pushes; ordered as the due index is, so it reads a few rows however long the backlog.
CLAIM_PUSHES = """
update pushes set lease_token = :token, lease_expires_at = :expires,
    next_attempt_at = :expires, attempts = attempts + 1
where seq in (
    select p.seq from pushes p
    where p.state = 'accepted' and p.next_attempt_at <= :now
      and not exists (
        select 1 from pushes q
        where p.order_key is not null and q.order_key = p.order_key
          and q.state = 'accepted' and q.seq < p.seq
      )
    order by p.next_attempt_at, p.seq limit :limit
)
returning *
"""


# When the next push may be claimed: the earliest due one nothing is ahead of (the due index's
# order, so a few rows are read however long the backlog).
NEXT_DUE = """
select p.next_attempt_at from pushes p
where p.state = 'accepted'
  and not exists (
    select 1 from pushes q
    where p.order_key is not null and q.order_key = p.order_key
      and q.state = 'accepted' and q.seq < p.seq
  )
order by p.next_attempt_at limit 1
"""


PUSH_STATES: frozenset[str] = frozenset(get_args(PushState))


# The push waiting to be processed that a new one with its coalesce key joins.
COALESCES_WITH = (
    "select * from pushes where source = ? and coalesce_key = ?"
    " and state = 'accepted' and lease_token is null"
)
# Whether a push of an order key (booking) is unfinished.
AHEAD = "select 1 from pushes where order_key = ? and state = 'accepted' limit 1"


def list_pushes_sql(state: PushState | None, limit: str = "?") -> str:
    """Newest pushes first, of one state, at most ``limit`` (its placeholder). The state is
    written out, not bound: SQLite uses a partial index (waiting pushes, failed pushes) only for a
    query that names its condition."""
    where = "" if state is None else f" where state = '{state}'"
    return f"select * from pushes{where} order by seq desc limit {limit}"


class PushStore(SQLiteBase):
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
        """Store a push durably. A push with a known dedupe key, or whose coalesce key matches a
        push still waiting, returns the stored one and False.

        With ``lease_seconds`` a new push is stored already leased to the caller (saving the claim
        round trip), unless an earlier push for the same booking is unfinished: then it waits its
        turn unleased, as ``claim_pushes`` would have left it."""
        now = time.time()
        row = _push_row(
            new_id("psh"), source, kind, payload, dedupe_key, order_key, coalesce_key, now
        )
        row.update(state=state, error=error)
        if state != "accepted":
            row["processed_at"] = now

        def insert() -> tuple[PushRecord, bool]:
            with self._immediate() as db:
                found = _known(db, source, row["dedupe_key"], coalesce_key)
                if found is not None:
                    return _push(found), False
                if lease_seconds is not None and state == "accepted":
                    _lease_new(db, row, order_key, now + lease_seconds)
                _insert(db, "pushes", row)
            return _new_push(row, payload), True

        return await self._write(insert)

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
        it was stored (the interface says what each outcome means)."""
        now = time.time()
        row = _push_row(id, source, kind, payload, dedupe_key, order_key, coalesce_key, now)

        def insert() -> tuple[PushRecord, bool, int, list[DeliveryRecord]]:
            leases = None if hand_over is None else FreshLeases(hand_over, now)
            with self._immediate() as db:
                if coalesce_key is not None:
                    found = _known(db, source, row["dedupe_key"], coalesce_key)
                    if found is not None:
                        return _push(found), False, 0, []
                # An earlier push of its booking unfinished: this one waits its turn, stored as
                # any other, and is processed again after that one.
                waits = order_key is not None and _ahead(db, order_key)
                if not waits:
                    row.update(state="processed", attempts=1, processed_at=now, note=note)
                if not _insert_new(db, row):
                    found = _known(db, source, row["dedupe_key"], None)
                    assert found is not None
                    return _push(found), False, 0, []
                if waits:
                    return _new_push(row, payload), True, 0, []
                created = _store_outcome(db, id, source, events, room_maps, now, leases)
            return _new_push(row, payload), True, created, [] if leases is None else leases.records

        record, new, created, leased = await self._write(insert, background=_large(events))
        if hand_over is not None:  # committed: the leases hold
            hand_over.leased = leased
        return record, new, created

    async def get_push(self, id: str) -> PushRecord | None:
        def get(db: Database) -> PushRecord | None:
            rows = list(db.query("select * from pushes where id = ?", [id]))
            return _push(rows[0]) if rows else None

        return await self._read(get)

    async def list_pushes(
        self, state: PushState | None = None, limit: int = 100
    ) -> list[PushRecord]:
        if state is not None and state not in PUSH_STATES:
            return []  # no push is in a state that doesn't exist (and none goes into the SQL)
        sql = list_pushes_sql(state)
        return await self._read(lambda db: [_push(row) for row in db.query(sql, [limit])])

    async def claim_pushes(self, limit: int, lease_seconds: float) -> list[PushRecord]:
        """Lease due pushes, longest due first, skipping any behind an unfinished earlier push for
        the same booking (so one booking's updates are processed in the order they arrived). The
        order is the due index's own, so a claim reads a few rows however long the backlog."""
        now = time.time()
        token = new_id("lease")

        def claim() -> list[PushRecord]:
            with self._immediate() as db:
                rows = db.query(
                    CLAIM_PUSHES,
                    {"token": token, "expires": now + lease_seconds, "now": now, "limit": limit},
                )
                return [_push(row) for row in rows]

        return await self._write(claim)

    async def next_push_due(self) -> float | None:
        def due(db: Database) -> float | None:
            # A leased push's next_attempt_at is its lease expiry. One waiting behind an earlier
            # push of its booking is left out: it is not claimed until that one is finished, and
            # its (past) due time made the processor claim again at once, in a loop, until then.
            row = db.execute(NEXT_DUE).fetchone()
            return None if row is None else float(row[0])

        return await self._read(due)

    async def defer_push(self, id: str, lease_token: str, error: str, delay: float) -> bool:
        """Record a temporary failure and when to try again; False if the lease was lost."""
        return await self._settle_push(
            id,
            lease_token,
            "update pushes set error = ?, next_attempt_at = ?, lease_token = null,"
            " lease_expires_at = null where id = ? and lease_token = ? and state = 'accepted'",
            [error, time.time() + delay, id, lease_token],
        )

    async def fail_push(self, id: str, lease_token: str | None, error: str) -> bool:
        sql = (
            "update pushes set state = 'failed', error = ?, processed_at = ?, lease_token = null,"
            " lease_expires_at = null where id = ?"
        )
        params: list[Any] = [error, time.time(), id]
        if lease_token is not None:
            sql += " and lease_token = ?"
            params.append(lease_token)
        return await self._settle_push(id, lease_token, sql, params)

    async def _settle_push(
        self, id: str, lease_token: str | None, sql: str, params: list[Any]
    ) -> bool:
        def settle() -> bool:
            with self._immediate() as db:
                return db.execute(sql, params).rowcount == 1

        return await self._write(settle)

    async def replay_push(self, id: str) -> PushRecord | None:
        """Queue a push for processing again, whatever its state."""

        def replay() -> PushRecord | None:
            with self._immediate() as db:
                rows = list(
                    db.query(
                        "update pushes set state = 'accepted', attempts = 0, next_attempt_at = ?,"
                        " lease_token = null, lease_expires_at = null, processed_at = null"
                        " where id = ? returning *",
                        [time.time(), id],
                    )
                )
            return _push(rows[0]) if rows else None

        return await self._write(replay)

    async def known_availability(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        # Read on the writer's connection: a reader connection's page cache is dropped whenever
        # the writer commits, so on a reader this primary-key read cost 30-85 µs of CPU per ARI
        # push under ingest load (a fifth of the Channex ingest profile) against a few µs on the
        # writer's warm cache. At once when no write is pending, else after those pending.
        def known() -> dict[str, dict[str, Any]]:
            conn = self._wdb.conn
            found: dict[str, dict[str, Any]] = {}
            for chunk in _chunks(keys, 500):
                marks = ",".join("?" * len(chunk))
                for key, availability in conn.execute(
                    f"select key, availability from availability_state where key in ({marks})",
                    chunk,
                ):
                    found[key] = orjson.loads(availability)
            return found

        if len(keys) > LARGE_PUSH_EVENTS:
            return await self._write(known, background=True)
        return await self._write_connection_read(known)

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
        """Store a push's events with their history and fan them out to matching subscriptions,
        store its sources' room maps, and mark the push processed, in one transaction. Returns the
        number of deliveries to send, or None when the lease was lost (another worker owns the
        push now); raises ``RoomMapConflict`` (nothing stored) when a room map moved on. Fresh
        messages that fit ``hand_over``'s room are stored leased and put in its ``leased``."""

        def complete() -> tuple[int | None, list[DeliveryRecord]]:
            now = time.time()
            leases = None if hand_over is None else FreshLeases(hand_over, now)
            with self._immediate() as db:
                owner = db.execute(
                    "select lease_token, state, source from pushes where id = ?", [id]
                ).fetchone()
                if owner is None or owner[0] != lease_token or owner[1] != "accepted":
                    return None, []
                created = _store_outcome(db, id, owner[2], events, room_maps, now, leases)
                db.execute(
                    "update pushes set state = 'processed', processed_at = ?, note = ?, error = null,"
                    " lease_token = null, lease_expires_at = null where id = ?",
                    [now, note, id],
                )
                return created, [] if leases is None else leases.records

        created, leased = await self._write(complete, background=_large(events))
        if hand_over is not None:  # committed: the leases hold
            hand_over.leased = leased
        return created

    async def replay_failed_pushes(self, ids: list[str] | None = None) -> list[str]:
        """Queue failed pushes (all, or the given ids) for processing again; returns their ids."""

        def replay() -> list[str]:
            sql = (
                "update pushes set state = 'accepted', attempts = 0, next_attempt_at = ?,"
                " lease_token = null, lease_expires_at = null, processed_at = null"
                " where state = 'failed'"
            )
            params: list[Any] = [time.time()]
            if ids is not None:
                sql += f" and id in ({','.join('?' * len(ids))})"
                params += ids
            with self._immediate() as db:
                return [row["id"] for row in db.query(sql + " returning id", params)]

        return await self._write(replay, background=True)


# A push with more events than this fans out on the writer thread: its transaction (one delivery
# row per event and subscription, ~30 µs each) would hold the event loop for tens of ms. Its
# slots' last availability is read there too.
LARGE_PUSH_EVENTS = 64


def _large(events: list[NewEvent]) -> bool:
    return len(events) > LARGE_PUSH_EVENTS


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
    """A new push's row, accepted and unleased."""
    return {
        "id": id,
        "source": source,
        "kind": kind,
        "dedupe_key": dedupe_key or id,
        "coalesce_key": coalesce_key,
        "order_key": order_key,
        "payload": _dumps(payload),
        "state": "accepted",
        "error": None,
        "attempts": 0,
        "next_attempt_at": now,
        "received_at": now,
        "processed_at": None,
    }


def _known(
    db: Database, source: str, dedupe_key: str, coalesce_key: str | None
) -> dict[str, Any] | None:
    """The stored push a new one repeats: the same dedupe key, or the same coalesce key on one
    still waiting (unleased) to be processed. On the raw connection: sqlite-utils' ``query``
    builds its row dict through a generator even when nothing is found, as for every new push."""
    conn = db.conn
    cursor = conn.execute(
        "select * from pushes where source = ? and dedupe_key = ?", [source, dedupe_key]
    )
    row = cursor.fetchone()
    if row is None and coalesce_key is not None:
        cursor = conn.execute(COALESCES_WITH, [source, coalesce_key])
        row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([column[0] for column in cursor.description], row, strict=True))


def _insert_new(db: Database, row: dict[str, Any]) -> bool:
    """Insert a push unless its dedupe key is stored (False): one probe of that unique index
    where a read first and then the insert made two, for every new push."""
    columns = tuple(row)
    cursor = db.conn.execute(_insert_new_sql(columns), tuple(row.values()))
    return cursor.rowcount == 1


@functools.lru_cache(maxsize=8)
def _insert_new_sql(columns: tuple[str, ...]) -> str:
    return _insert_sql("pushes", columns) + " on conflict (source, dedupe_key) do nothing"


def _ahead(db: Database, order_key: str) -> bool:
    """Whether a push of this order key (booking) is unfinished."""
    return db.conn.execute(AHEAD, [order_key]).fetchone() is not None


def _lease_new(db: Database, row: dict[str, Any], order_key: str | None, expires: float) -> None:
    """Lease a push about to be inserted, as ``claim_pushes`` would, if nothing is ahead of it."""
    if order_key is not None and _ahead(db, order_key):
        return
    row.update(
        lease_token=new_id("lease"),
        lease_expires_at=expires,
        next_attempt_at=expires,
        attempts=1,
    )


def _new_push(row: dict[str, Any], payload: Any) -> PushRecord:
    """A push just inserted, from the row written and the payload it stores: neither parsed back
    from the row's JSON nor validated (``_push`` of a new row was 20 µs per push on the writer)."""
    return trusted(
        PushRecord,
        {
            "id": row["id"],
            "source": row["source"],
            "kind": row["kind"],
            "state": row["state"],
            "payload": payload,
            "error": row["error"],
            "note": row.get("note"),
            "attempts": row["attempts"],
            "next_attempt_at": row["next_attempt_at"],
            "received_at": row["received_at"],
            "processed_at": row["processed_at"],
            "lease_token": row.get("lease_token"),
        },
    )


def _push(row: dict[str, Any]) -> PushRecord:
    payload = row.get("payload")
    return PushRecord(
        id=row["id"],
        source=row["source"],
        kind=row["kind"],
        state=row["state"],
        payload=orjson.loads(payload) if payload else None,
        error=row.get("error"),
        note=row.get("note"),
        attempts=row.get("attempts") or 0,
        next_attempt_at=row["next_attempt_at"],
        received_at=row["received_at"],
        processed_at=row.get("processed_at"),
        lease_token=row.get("lease_token"),
    )


def _store_outcome(
    db: Database,
    push_id: str,
    source: str,
    events: list[NewEvent],
    room_maps: Sequence[RoomMapUpdate],
    now: float,
    leases: FreshLeases | None = None,
) -> int:
    """What processing a push produced: its room maps (``RoomMapConflict`` when one moved on),
    its events with their history, and their deliveries (leased where ``leases`` has room).
    Returns how many deliveries to send."""
    write_room_maps(db, room_maps, now)
    subscribers = _Subscribers(db)
    created = 0
    for event in events:
        data = _with_history(db, event, now)
        if data is None:
            continue
        created += _fan_out(db, event, data, push_id, source, subscribers, now, leases)
    return created


class _Subscribers:
    """The active subscriptions, read once per transaction and grouped by event. A disabled one
    gets no messages (a replay once it is back on sends what it missed)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._by_event: dict[str, list[tuple[str, list[str]]]] | None = None

    def for_event(self, event: str) -> list[tuple[str, list[str]]]:
        if self._by_event is None:
            self._by_event = {}
            for id, name, products in self._db.conn.execute(
                "select id, event, products from subscriptions where deleted_at is null"
                " and active = 1 order by created_at, id"
            ).fetchall():
                self._by_event.setdefault(name, []).append((id, orjson.loads(products)))
        return self._by_event.get(event, [])


UPSERT_BOOKING = (
    "insert into booking_state (key, revision, version, booking, updated_at, uuid,"
    " supplier_reference, reseller_reference, stay_end) values (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " on conflict (key) do update set revision = excluded.revision, version = excluded.version,"
    " booking = excluded.booking, updated_at = excluded.updated_at, uuid = excluded.uuid,"
    " supplier_reference = excluded.supplier_reference,"
    " reseller_reference = excluded.reseller_reference, stay_end = excluded.stay_end"
)


def _with_history(db: Database, event: NewEvent, now: float) -> dict[str, Any] | None:
    """The event's body data with what the previous state of its subject says (the booking
    ``diff``), or None when it changes nothing a subscriber would see."""
    conn = db.conn
    if event.event == "booking_update":
        booking = event.data["booking"]
        row = conn.execute(
            "select revision, booking, version from booking_state where key = ?",
            [event.state_key],
        ).fetchone()
        previous = orjson.loads(row[1]) if row else None
        if row is not None and event.revision is not None and row[0] == event.revision:
            return None
        if row is not None and is_older(event.version, row[2]):
            return None  # an older version of the booking, delivered late by the PMS
        booking = keep_cancellation_time(previous, booking)
        diff = booking_diff(previous, booking)
        if previous is not None and not diff:
            # Nothing to send, but this version is the newest seen: an older one arriving later
            # must still be judged stale against it (the booking sent stays as it was).
            conn.execute(
                "update booking_state set revision = ?, version = coalesce(?, version)"
                " where key = ?",
                [event.revision, event.version, event.state_key],
            )
            return None
        conn.execute(
            UPSERT_BOOKING,
            (
                event.state_key,
                event.revision,
                event.version,
                _dumps(booking),
                now,
                *booking_lookups(booking),
            ),
        )
        return {"booking": booking, "diff": diff}
    availability = event.data["availability"]
    row = conn.execute(
        "select availability from availability_state where key = ?", [event.state_key]
    ).fetchone()
    if event.only_if_changed and row is not None and orjson.loads(row[0]) == availability:
        return None
    conn.execute(
        "insert into availability_state (key, availability, updated_at) values (?, ?, ?)"
        " on conflict (key) do update set availability = excluded.availability,"
        " updated_at = excluded.updated_at",
        [event.state_key, _dumps(availability), now],
    )
    return {
        "availability": availability,
        "productId": event.product_id,
        "optionId": event.option_id,
    }


# ``state in (...)`` repeats the partial index's condition: SQLite uses a partial index only
# when the query names its WHERE term, and ``state = 'pending'`` alone scans the whole table.
# A newer availability supersedes a message of its subject still waiting, for each subscription
# the event goes to: one statement per event (an executemany ran it once per message, ~5 of the
# ~7 µs per message being the statement's own overhead).
SUPERSEDE_CHUNK = 100


@functools.lru_cache(maxsize=16)
def supersede_statement(keys: int) -> str:
    marks = ", ".join("?" * keys)
    return (
        "update deliveries set state = 'superseded', updated_at = ?"
        f" where order_key in ({marks}) and state in ('pending', 'leased') and state = 'pending'"
    )


SUPERSEDE = supersede_statement(1)
INSERT_DELIVERY = (
    "insert into deliveries (id, event_seq, subscription_id, order_key, state, next_attempt_at,"
    " created_at, updated_at) values (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _fan_out(
    db: Database,
    event: NewEvent,
    data: dict[str, Any],
    push_id: str,
    source: str,
    subscribers: _Subscribers,
    now: float,
    leases: FreshLeases | None = None,
) -> int:
    """Store the event once and one small delivery row per active subscription whose event and
    products match; a newer availability for the same subject supersedes one still waiting. Returns the
    number of deliveries to send."""
    data_text = _dumps(data)
    conn = db.conn
    cursor = conn.execute(
        "insert into events (id, push_id, source, event, subject, product_id, option_id, data,"
        " created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            new_id("evt"),
            push_id,
            source,
            event.event,
            event.subject,
            event.product_id,
            event.option_id,
            data_text,
            now,
        ],
    )
    event_seq = cursor.lastrowid
    assert event_seq is not None
    rows = []
    for subscription_id, products in subscribers.for_event(event.event):
        if "*" not in products and event.product_id not in products:
            continue
        order_key = f"{subscription_id}|{event.subject}"
        rows.append(
            (new_id("msg"), event_seq, subscription_id, order_key, "pending", now, now, now)
        )
    if event.event == "availability_update":
        for keys in _chunks([row[3] for row in rows], SUPERSEDE_CHUNK):
            conn.execute(supersede_statement(len(keys)), [now, *keys])
    created = len(rows)
    if leases is not None:
        rows = leases.lease(db, event_seq, event.event, data_text, rows)
    conn.executemany(INSERT_DELIVERY, rows)
    return created
