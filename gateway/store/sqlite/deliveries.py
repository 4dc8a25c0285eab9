"""Deliveries in SQLite: claims, settlements, the attempt log, replay and pruning.

A delivery row holds its event, subscription, state, attempts and times (storage v2, m008); its body
is rendered from the event when it is sent, and kept in ``delivery_bodies`` only for a message that
must be tried again, so every attempt of one message sends the same bytes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import orjson
from sqlite_utils import Database

from gateway.models import (
    AttemptRecord,
    DeliveryRecord,
    EventName,
    trusted,
)
from gateway.store.interface import ClaimRoom, HandOver, Settlement
from gateway.store.replay import missed_events
from gateway.store.sqlite.base import (
    SQLiteBase,
    _chunks,
    _ts,
    new_id,
    utcnow,
)


class DeliveryStore(SQLiteBase):
    async def claim_deliveries(
        self, room: ClaimRoom, lease_seconds: float, *, ordering_max_wait: float
    ) -> list[DeliveryRecord]:
        """Lease due deliveries, at most ``room.total`` and no more per subscription than it has
        free. A delivery waits while an earlier one of the same subject (booking) for the same
        subscription is unfinished, unless that one is older than ``ordering_max_wait``. A
        subscription at its limit is passed over however deep its backlog, so a slow subscriber
        can't hold up the others."""
        token = new_id("lease")

        def claim() -> list[DeliveryRecord]:
            now = time.time()
            with self._immediate() as db:
                expires = now + lease_seconds
                rows = _claim_due(db, room, token, now, expires, ordering_max_wait)
                events = _events(db, [row[2] for row in rows])
                bodies = _bodies(db, [row[0] for row in rows if row[5]])
            return [
                _delivery(row, *events[row[2]], bodies.get(row[0]), token, expires) for row in rows
            ]

        return await self._write(claim)

    async def next_delivery_due(self) -> float | None:
        # Read by the worker every tenth of a second while it sends: on the write connection,
        # not a reader's (whose cache every commit drops) reached through a thread.
        def due() -> float | None:
            row = self._wdb.conn.execute(NEXT_DUE).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._write_connection_read(due)

    async def settle_deliveries(self, settlements: list[Settlement]) -> list[bool]:
        """Record attempts and the deliveries' new states in one transaction, each fenced by its
        lease (False for one whose lease was lost); track how long a subscription has been failing
        and disable it (410 Gone at once, or failing too long). The common case, a batch of
        first attempts delivered, is three statements whatever the batch's size: the fenced
        state updates, the attempt rows, the end of failing streaks."""

        def settle() -> list[bool]:
            now = time.time()
            with self._immediate() as db:
                return _settle(db, settlements, now)

        return await self._write(settle)

    async def skip_delivery(self, delivery: DeliveryRecord, reason: str) -> None:
        def skip() -> None:
            with self._immediate() as db:
                db.execute(
                    "update deliveries set state = 'skipped', last_error = ?, lease_token = null,"
                    " lease_expires_at = null, updated_at = ? where seq = ? and lease_token = ?",
                    [reason, time.time(), delivery.seq, delivery.lease_token],
                )
                db.execute("delete from delivery_bodies where delivery_seq = ?", [delivery.seq])

        await self._write(skip)

    async def release_deliveries(self, deliveries: list[DeliveryRecord]) -> None:
        """Give leased deliveries back (shutdown), so the next run sends them at once."""

        def release() -> None:
            with self._immediate() as db:
                now = time.time()
                db.conn.executemany(
                    "update deliveries set state = 'pending', lease_token = null,"
                    " lease_expires_at = null, next_attempt_at = ?"
                    " where seq = ? and lease_token = ?",
                    [(now, delivery.seq, delivery.lease_token) for delivery in deliveries],
                )

        await self._write(release)

    async def list_attempts(
        self,
        subscription_id: str,
        *,
        state: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[tuple[int, AttemptRecord, str]]:
        """Attempts for one subscription, newest first, each with its delivery's current state."""
        sql = (
            "select a.*, d.id as delivery_id, d.state as delivery_state from attempts a"
            " join deliveries d on d.seq = a.delivery_seq where a.subscription_id = ?"
        )
        params: list[Any] = [subscription_id]
        if state is not None:
            sql += " and d.state = ?"
            params.append(state)
        if before is not None:
            sql += " and a.id < ?"
            params.append(before)
        sql += " order by a.id desc limit ?"
        params.append(limit)

        def list_(db: Database) -> list[tuple[int, AttemptRecord, str]]:
            out = []
            for row in db.query(sql, params):
                state_now = row.pop("delivery_state")
                attempt_id = row.pop("id")
                del row["delivery_seq"]
                out.append((attempt_id, AttemptRecord.model_construct(**row), state_now))
            return out

        return await self._read(list_)

    async def list_deliveries(
        self, subscription_id: str, *, state: str | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        sql = (
            "select d.*, e.event from deliveries d join events e on e.seq = d.event_seq"
            " where d.subscription_id = ?"
        )
        params: list[Any] = [subscription_id]
        if state is not None:
            sql += " and d.state = ?"
            params.append(state)
        sql += " order by d.seq desc limit ?"
        params.append(limit)
        return await self._read(lambda db: [_listed(r) for r in db.query(sql, params)])

    async def replay_deliveries(self, subscription_id: str, since: float) -> int:
        """Send again every message of a subscription created since ``since`` that is not waiting
        already (delivered, dead or skipped); each keeps its webhook-id and its attempt numbers,
        and gets the whole retry schedule again. Events since then that the subscription got no
        message for (it was disabled: it gets none meanwhile) get one now, unless a later update
        of the same booking or day was sent since (sending the older one after it would undo it).
        Returns how many messages will be sent.

        What to send is worked out on a reader and written in chunks of ``REPLAY_CHUNK``, each
        its own short transaction: done in one writer transaction, a replay over 150,000 messages
        held the single writer for 14 s and every push waiting behind it answered 503."""
        plan = await self._read(partial(_replay_plan, subscription_id=subscription_id, since=since))
        replayed = 0
        for seqs in _chunks(plan.requeue, REPLAY_CHUNK):
            replayed += await self._write(partial(self._requeue, seqs), background=True)
        inserted: set[int] = set()
        for missed in _chunks(plan.missed, REPLAY_CHUNK):
            replayed += await self._write(
                partial(self._queue_missed, subscription_id, missed, plan.last_seq, inserted),
                background=True,
            )
        return replayed

    def _requeue(self, seqs: list[int]) -> int:
        now = time.time()
        marks = ",".join("?" * len(seqs))
        # Only messages still finished: one queued again meanwhile keeps its state and body.
        finished = f"seq in ({marks}) and state in ('delivered', 'dead', 'skipped')"
        with self._immediate() as db:
            # A replay renders the message afresh (the subscription may have changed since).
            db.execute(
                f"delete from delivery_bodies where delivery_seq in"
                f" (select seq from deliveries where {finished})",
                seqs,
            )
            return int(
                db.execute(
                    "update deliveries set state = 'pending', replayed_after = attempts,"
                    f" next_attempt_at = ?, updated_at = ? where {finished}",
                    [now, now, *seqs],
                ).rowcount
            )

    def _queue_missed(
        self,
        subscription_id: str,
        missed: list[tuple[int, str]],
        last_seq: int,
        inserted: set[int],
    ) -> int:
        """Queue the chunk's missed events, but none of a subject that got a message since the
        plan was read (a newer event, or another replay's): it must not be followed by an older one."""
        now = time.time()
        with self._immediate() as db:
            newer = {
                order_key
                for seq, order_key in db.execute(
                    "select seq, order_key from deliveries where subscription_id = ? and seq > ?",
                    [subscription_id, last_seq],
                )
                if seq not in inserted
            }
            queued = 0
            for event_seq, subject in missed:
                order_key = f"{subscription_id}|{subject}"
                if order_key in newer:
                    continue
                cursor = db.execute(
                    "insert into deliveries (id, event_seq, subscription_id, order_key, state,"
                    " next_attempt_at, created_at, updated_at)"
                    " values (?, ?, ?, ?, 'pending', ?, ?, ?)",
                    [new_id("msg"), event_seq, subscription_id, order_key, now, now, now],
                )
                assert cursor.lastrowid is not None
                inserted.add(cursor.lastrowid)
                queued += 1
            return queued

    async def queue_stats(self) -> dict[str, float]:
        def stats(db: Database) -> dict[str, float]:
            depth, oldest = db.execute(
                "select count(*), min(created_at) from deliveries where state in ('pending', 'leased')"
            ).fetchone()
            return {
                "depth": float(depth),
                "oldest_age": 0.0 if oldest is None else max(time.time() - oldest, 0.0),
            }

        return await self._read(stats)

    async def replay_progress(self, subscription_id: str, since: float) -> tuple[int, int]:
        """(waiting, finished) among a subscription's messages created since ``since``."""

        def progress(db: Database) -> tuple[int, int]:
            waiting, finished = db.execute(
                "select sum(state in ('pending', 'leased')), sum(state in ('delivered', 'dead'))"
                " from deliveries where subscription_id = ? and created_at >= ?",
                [subscription_id, since],
            ).fetchone()
            return int(waiting or 0), int(finished or 0)

        return await self._read(progress)


REPLAY_CHUNK = 500


@dataclass
class _ReplayPlan:
    requeue: list[int]  # finished messages to send again
    missed: list[tuple[int, str]]  # (event seq, subject) to queue, in event order
    last_seq: int  # the newest message when this was read


def _replay_plan(db: Database, *, subscription_id: str, since: float) -> _ReplayPlan:
    """What a replay sends, read in one snapshot. Missed: each event since ``since`` the
    subscription matches but got no message for (it was disabled), in event order; for
    availability only each day's latest. An event is left out when the subscription has a message
    for it or for a later event of its subject."""
    with _snapshot(db):
        last_seq = db.execute("select coalesce(max(seq), 0) from deliveries").fetchone()[0]
        requeue = [
            row[0]
            for row in db.execute(
                "select seq from deliveries where subscription_id = ? and created_at >= ?"
                " and state in ('delivered', 'dead', 'skipped') order by seq",
                [subscription_id, since],
            )
        ]
        found = db.execute(
            "select event, products from subscriptions where id = ? and deleted_at is null",
            [subscription_id],
        ).fetchone()
        if found is None:
            return _ReplayPlan(requeue, [], last_seq)
        event, products = found[0], set(orjson.loads(found[1]))
        prefix = len(subscription_id) + 1  # order_key is "<subscription id>|<subject>"
        latest: dict[str, int] = {}
        for order_key, event_seq in db.execute(
            "select order_key, event_seq from deliveries where subscription_id = ?",
            [subscription_id],
        ):
            subject = order_key[prefix:]
            latest[subject] = max(latest.get(subject, 0), event_seq)
        ordered = missed_events(
            db.execute(
                "select seq, subject, product_id from events where event = ? and created_at >= ?"
                " order by seq",
                [event, since],
            ),
            event,
            products,
            latest,
        )
    return _ReplayPlan(requeue, ordered, last_seq)


@contextmanager
def _snapshot(db: Database) -> Iterator[None]:
    """One read transaction: every query inside sees the same committed state."""
    db.conn.execute("BEGIN")
    try:
        yield
    finally:
        db.conn.execute("COMMIT")


# The subscriptions with messages queued or in flight: a loose index scan (one seek per
# subscription), however deep any one subscription's backlog is.
_QUEUED_SUBSCRIPTIONS = """
with recursive subs(id) as (
    select min(subscription_id) from deliveries indexed by deliveries_due_by_subscription
    where state in ('pending', 'leased')
    union all
    select (
        select min(subscription_id) from deliveries indexed by deliveries_due_by_subscription
        where state in ('pending', 'leased') and subscription_id > subs.id
    )
    from subs where subs.id is not null
)
"""

# Each of them with its earliest queued message's next_attempt_at: due now when that is past (a
# leased message's next_attempt_at is its lease expiry, so an unexpired lease is never earliest
# while a message of the subscription is due).
_EARLIEST = """
select id, (
    select next_attempt_at from deliveries indexed by deliveries_due_by_subscription
    where subscription_id = subs.id and state in ('pending', 'leased')
    order by next_attempt_at, seq limit 1
) as earliest
from subs where id is not null
"""
SUBSCRIPTIONS_QUEUED = _QUEUED_SUBSCRIPTIONS + _EARLIEST

# When the next queued message falls due.
NEXT_DUE = _QUEUED_SUBSCRIPTIONS + f"select min(earliest) from ({_EARLIEST})"


# One subscription's share of a claim: its oldest due messages, each only if no earlier message
# of its subject (booking) for this subscription is unfinished, unless that one is older than
# max_wait. ``{n}`` numbers the share's parameters within the claim.
_SHARE = """
select seq from (
    select d.seq from deliveries d indexed by deliveries_due_by_subscription
    -- a leased row's next_attempt_at is its lease expiry
    where d.subscription_id = :subscription{n} and d.state in ('pending', 'leased')
      and d.next_attempt_at <= :now
      and not exists (
        select 1 from deliveries e
        where e.order_key = d.order_key and e.seq < d.seq
          and e.state in ('pending', 'leased')
          and e.created_at > :now - :max_wait
      )
    order by d.next_attempt_at, d.seq limit :limit{n}
)"""

# What a claim reads back of a leased row (the rest it knows: state, token, expiry).
CLAIMED_COLUMNS = (
    "seq, id, event_seq, subscription_id, order_key, attempts, replayed_after, last_status,"
    " last_error, created_at, delivered_at"
)


# At most this many shares per statement: SQLite refuses a compound SELECT of more than 500
# terms (SQLITE_MAX_COMPOUND_SELECT), and each size is a statement of its own to prepare and cache.
SHARES_PER_STATEMENT = 32


@lru_cache(maxsize=SHARES_PER_STATEMENT)
def claim_statement(shares: int) -> str:
    """Leases the shares of ``shares`` subscriptions in one statement (one per claim, not one per
    subscription): each share's rows are found by a seek of its own on the per-subscription index."""
    found = "\n    union all\n".join(_SHARE.format(n=i or "") for i in range(shares))
    return f"""
update deliveries set state = 'leased', lease_token = :token,
    lease_expires_at = :expires, next_attempt_at = :expires, updated_at = :now
where seq in ({found}
)
returning {CLAIMED_COLUMNS}
"""


CLAIM_FOR_SUBSCRIPTION = claim_statement(1)


def _claim_due(
    db: Database,
    room: ClaimRoom,
    token: str,
    now: float,
    expires: float,
    ordering_max_wait: float,
) -> list[tuple[Any, ...]]:
    """Lease up to ``room.total`` due messages: subscriptions in the order of their oldest due
    message, each up to its free slots. One at its limit is passed over without reading its
    backlog.

    The shares are worked out before the statement runs, as if each subscription had enough due;
    one that had less (a short backlog, messages waiting their turn) leaves room unused, which a
    second statement offers to the subscriptions that filled their shares."""
    if room.total <= 0:
        return []
    waiting = [
        subscription_id
        for _, subscription_id in sorted(
            (earliest, subscription_id)
            for subscription_id, earliest in db.execute(SUBSCRIPTIONS_QUEUED)
            if earliest <= now and room.free(subscription_id) > 0
        )
    ]
    conn = db.conn
    rows: list[tuple[Any, ...]] = []
    tally = room.tally()  # a tenant's subscriptions share its room
    while waiting:
        left = room.total - len(rows)
        shares: list[tuple[str, int]] = []
        for subscription_id in waiting:
            if left <= 0:
                break
            share = min(tally.free(subscription_id), left)
            if share > 0:
                shares.append((subscription_id, share))
                tally.took(subscription_id, share)
                left -= share
        if not shares:
            break
        batch: list[tuple[Any, ...]] = []
        for chunk in _chunks(shares, SHARES_PER_STATEMENT):
            params: dict[str, Any] = {
                "token": token,
                "expires": expires,
                "now": now,
                "max_wait": ordering_max_wait,
            }
            for i, (subscription_id, share) in enumerate(chunk):
                params[f"subscription{i or ''}"] = subscription_id
                params[f"limit{i or ''}"] = share
            batch += conn.execute(claim_statement(len(chunk)), params).fetchall()
        rows += batch
        got = Counter(row[3] for row in batch)
        short = {sid for sid, share in shares if got[sid] < share}
        for subscription_id, share in shares:
            tally.took(subscription_id, got[subscription_id] - share)
        if not short:
            break
        # Those that had less than their share have nothing more due now.
        waiting = [sid for sid in waiting if sid not in short]
    rows.sort()  # oldest first
    return rows


# Leases at fan-out (``FreshLeases``): whether a subscription has messages due that a claim would
# take before a fresh one, and whether a message of the same subject is unfinished.
BACKLOG = """
select 1 from deliveries indexed by deliveries_due_by_subscription
where subscription_id = ? and state in ('pending', 'leased') and next_attempt_at <= ? limit 1
"""
UNFINISHED = (
    "select 1 from deliveries where order_key = ? and state in ('pending', 'leased') limit 1"
)
INSERT_LEASED = (
    "insert into deliveries (id, event_seq, subscription_id, order_key, state, lease_token,"
    " lease_expires_at, next_attempt_at, created_at, updated_at)"
    " values (?, ?, ?, ?, 'leased', ?, ?, ?, ?, ?)"
)


class FreshLeases:
    """Leases a fan-out's fresh messages to the delivery worker within the room it lent
    (``HandOver``), in the transaction that stores them: no claim statement, no events re-read.

    A message is leased only where a claim would have leased it first: its subscription and
    tenant have room, the subscription has nothing older due (a claim serves the oldest first),
    and no message of its subject (booking, day) is unfinished (per-booking order)."""

    def __init__(self, hand_over: HandOver, now: float) -> None:
        self.tally = hand_over.room.tally()
        self.left = hand_over.room.total
        self.token = new_id("lease")
        self.expires = now + hand_over.lease_seconds
        self.now = now
        self.records: list[DeliveryRecord] = []
        self._backlog: dict[str, bool] = {}

    def lease(
        self,
        db: Database,
        event_seq: int,
        event: EventName,
        data_text: str,
        rows: list[tuple[Any, ...]],
    ) -> list[tuple[Any, ...]]:
        """Insert leased what may be leased of one event's delivery rows (``INSERT_DELIVERY``'s
        parameters); returns the rest, to be stored pending."""
        if self.left <= 0:
            return rows
        conn = db.conn
        rest: list[tuple[Any, ...]] = []
        data: dict[str, Any] | None = None
        for row in rows:
            id, _, subscription_id, order_key = row[:4]
            if (
                self.left <= 0
                or self.tally.free(subscription_id) <= 0
                or self._has_backlog(conn, subscription_id)
                or conn.execute(UNFINISHED, [order_key]).fetchone() is not None
            ):
                rest.append(row)
                continue
            cursor = conn.execute(
                INSERT_LEASED,
                [
                    id,
                    event_seq,
                    subscription_id,
                    order_key,
                    self.token,
                    self.expires,
                    self.expires,
                    self.now,
                    self.now,
                ],
            )
            if data is None:
                # What a claim would read back: the stored text, not the dict it was made from.
                data = orjson.loads(data_text)
            self.records.append(self._record(cursor.lastrowid, row, event, data))
            self.tally.took(subscription_id, 1)
            self.left -= 1
        return rest

    def _has_backlog(self, conn: Any, subscription_id: str) -> bool:
        """Whether the subscription had messages due before this fan-out (asked once: rows this
        fan-out stores pending are behind the ones it leases anyway)."""
        known = self._backlog.get(subscription_id)
        if known is None:
            known = conn.execute(BACKLOG, [subscription_id, self.now]).fetchone() is not None
            self._backlog[subscription_id] = known
        return known

    def _record(
        self, seq: int | None, row: tuple[Any, ...], event: EventName, data: dict[str, Any]
    ) -> DeliveryRecord:
        assert seq is not None
        id, event_seq, subscription_id, order_key = row[:4]
        # A fresh message in CLAIMED_COLUMNS' order: never tried, nothing kept of an answer.
        claimed = (seq, id, event_seq, subscription_id, order_key, 0, 0, None, None, self.now, None)
        return _delivery(claimed, event, data, None, self.token, self.expires)


def _events(db: Database, seqs: list[int]) -> dict[int, tuple[EventName, dict[str, Any]]]:
    """Each event's name and data, read and parsed once however many messages share it."""
    found: dict[int, tuple[EventName, dict[str, Any]]] = {}
    unique = sorted(set(seqs))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for seq, name, text in db.execute(
            f"select seq, event, data from events where seq in ({marks})", chunk
        ):
            found[seq] = (name, orjson.loads(text))
    return found


def _bodies(db: Database, seqs: list[int]) -> dict[int, bytes]:
    """The bodies kept for messages tried before (a retry sends the same bytes)."""
    found: dict[int, bytes] = {}
    for start in range(0, len(seqs), 500):
        chunk = seqs[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for seq, body in db.execute(
            f"select delivery_seq, body from delivery_bodies where delivery_seq in ({marks})",
            chunk,
        ):
            found[seq] = bytes(body)
    return found


def _delivery(
    row: tuple[Any, ...],
    name: EventName,
    data: dict[str, Any],
    body: bytes | None,
    token: str,
    expires: float,
) -> DeliveryRecord:
    """A leased row (``CLAIMED_COLUMNS``) with its event as the worker gets it (our own row:
    built without validation)."""
    (
        seq,
        id,
        event_seq,
        subscription_id,
        order_key,
        attempts,
        replayed_after,
        last_status,
        last_error,
        created_at,
        delivered_at,
    ) = row
    return trusted(
        DeliveryRecord,
        {
            "seq": seq,
            "id": id,
            "event_seq": event_seq,
            "subscription_id": subscription_id,
            "event": name,
            "order_key": order_key,
            "state": "leased",
            "attempts": attempts,
            "replayed_after": replayed_after,
            "next_attempt_at": expires,
            "lease_token": token,
            "body": body,
            "last_status": last_status,
            "last_error": last_error,
            "created_at": created_at,
            "delivered_at": delivered_at,
            "data": data,
        },
    )


def _listed(row: dict[str, Any]) -> DeliveryRecord:
    fields = {k: row[k] for k in DeliveryRecord.model_fields if k in row and k != "data"}
    return DeliveryRecord(**fields)


SETTLE = (
    "update deliveries set state = ?, attempts = attempts + 1,"
    " next_attempt_at = coalesce(?, next_attempt_at), lease_token = null, lease_expires_at = null,"
    " last_status = ?, last_error = ?, updated_at = ?, delivered_at = ?"
    " where seq = ? and lease_token = ?"
)
INSERT_ATTEMPT = (
    "insert into attempts (delivery_seq, subscription_id, attempt, attempted_at, outcome, status,"
    " latency_ms, error, response) values (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _settle(db: Database, settlements: list[Settlement], now: float) -> list[bool]:
    conn = db.conn
    settled = _update_held(conn, settlements, now)
    held = {s.delivery.seq for s in settled}
    conn.executemany(
        INSERT_ATTEMPT,
        [
            (
                s.delivery.seq,
                s.delivery.subscription_id,
                s.attempt.attempt,
                s.attempt.attempted_at,
                s.attempt.outcome,
                s.attempt.status,
                s.attempt.latency_ms,
                s.attempt.error,
                s.attempt.response,
            )
            for s in settled
        ],
    )
    # A body is kept only while its message waits for another attempt.
    conn.executemany(
        "insert or ignore into delivery_bodies (delivery_seq, body) values (?, ?)",
        [(s.delivery.seq, s.body) for s in settled if s.state == "pending" and s.body is not None],
    )
    finished = [(s.delivery.seq,) for s in settled if s.state != "pending" and s.delivery.attempts]
    if finished:
        conn.executemany("delete from delivery_bodies where delivery_seq = ?", finished)
    delivered = sorted({s.delivery.subscription_id for s in settled if s.state == "delivered"})
    if delivered:
        marks = ",".join("?" * len(delivered))
        conn.execute(
            "update subscriptions set failing_since = null"
            f" where id in ({marks}) and failing_since is not null",
            delivered,
        )
    for s in settled:
        if s.state == "dead" or s.disable_reason is not None:
            _track_health(
                db, s.delivery.subscription_id, s.state, now, s.disable_reason, s.disable_after
            )
    return [s.delivery.seq in held for s in settlements]


def _update_held(conn: Any, settlements: list[Settlement], now: float) -> list[Settlement]:
    """Write the new state of each message whose lease is still held, fenced by its token in
    the UPDATE itself; returns those. The common case, every lease held, costs that one
    statement. Should the count fall short (a lease ran out and another claim took the message,
    or an erase removed it), the savepoint undoes it and the held ones are read first."""
    fenced = [s for s in settlements if s.delivery.lease_token is not None]
    # An error leaves the savepoint to the batch's rollback, which undoes the whole transaction.
    conn.execute("SAVEPOINT settle")
    if conn.executemany(SETTLE, _settle_rows(fenced, now)).rowcount == len(fenced):
        conn.execute("RELEASE settle")
        return fenced
    conn.execute("ROLLBACK TO settle")
    held: set[int] = set()
    for chunk in _chunks(fenced, 500):
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"select seq, lease_token from deliveries where seq in ({marks})",
            [s.delivery.seq for s in chunk],
        )
        tokens = dict(rows.fetchall())
        held.update(
            s.delivery.seq for s in chunk if tokens.get(s.delivery.seq) == s.delivery.lease_token
        )
    settled = [s for s in fenced if s.delivery.seq in held]
    conn.executemany(SETTLE, _settle_rows(settled, now))
    conn.execute("RELEASE settle")
    return settled


def _settle_rows(settlements: list[Settlement], now: float) -> list[tuple[Any, ...]]:
    return [
        (
            s.state,
            s.next_attempt_at,
            s.attempt.status,
            s.attempt.error,
            now,
            now if s.state == "delivered" else s.delivery.delivered_at,
            s.delivery.seq,
            s.delivery.lease_token,
        )
        for s in settlements
    ]


def _track_health(
    db: Database,
    subscription_id: str,
    state: str,
    now: float,
    disable_reason: str | None,
    disable_after: float | None,
) -> None:
    """A delivered message clears the failing streak; a dead one starts it (if not running) and
    disables the subscription once it has lasted ``disable_after`` seconds."""
    if state == "delivered":
        db.execute(
            "update subscriptions set failing_since = null where id = ? and failing_since is not null",
            [subscription_id],
        )
        return
    if state == "dead":
        db.execute(
            "update subscriptions set failing_since = coalesce(failing_since, ?) where id = ?",
            [now, subscription_id],
        )
        if disable_after is not None and disable_reason is None:
            row = db.execute(
                "select failing_since from subscriptions where id = ?", [subscription_id]
            ).fetchone()
            if row and row[0] is not None and now - row[0] >= disable_after:
                disable_reason = f"failing continuously for {disable_after / 3600:g} hours"
    if disable_reason is not None:
        db.execute(
            "update subscriptions set active = 0, disabled_reason = ?, updated_at = ? where id = ?",
            [disable_reason, _ts(utcnow()), subscription_id],
        )
