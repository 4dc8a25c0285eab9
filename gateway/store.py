"""Durable storage: the only module that speaks SQL.

``SQLiteStore`` implements ``gateway.storage.Store`` on one SQLite file through sqlite-utils. Every write runs on a single writer thread (so the event loop never blocks on a
write and SQLite never sees two writers from this process); reads run on a small pool of reader
threads, each with its own connection, which WAL lets proceed while the writer writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlite_utils import Database

from gateway.migrations import migrations
from gateway.models import (
    AttemptRecord,
    DeliveryRecord,
    DeliveryState,
    NewEvent,
    PushRecord,
    PushState,
    Subscription,
)
from gateway.translate.diff import booking_diff

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def connect(path: Path | str) -> Database:
    """A connection configured the way every gateway connection must be."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
    db = Database(conn, execute_plugins=False)
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA foreign_keys = ON")
    # NORMAL is durable in WAL mode against process crashes (kill -9); only an OS crash or power
    # loss can lose the last transactions.
    db.execute("PRAGMA synchronous = NORMAL")
    return db


class SQLiteStore:
    """The embedded default: one SQLite file in WAL mode."""

    def __init__(self, path: Path | str, *, readers: int = 2) -> None:
        self.path = Path(path)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="store-reader")
        self._write_db: Database | None = None
        self._local = threading.local()
        self._reader_dbs: list[Database] = []
        self._reader_lock = threading.Lock()
        # Group commit: writes queue here and the writer thread runs all that are waiting in one
        # transaction, answering each caller once it is committed.
        self._queue: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._queue_lock = threading.Lock()
        self._flushing = False
        self._in_batch = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._open_writer)

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect(self.path)
        db.enable_wal()
        migrations.apply(db)
        self._write_db = db

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._close_writer)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for db in self._reader_dbs:
                db.close()
            self._reader_dbs.clear()

    def _close_writer(self) -> None:
        if self._write_db is not None:
            self._write_db.close()
            self._write_db = None

    # -- plumbing ------------------------------------------------------------------------------

    async def _write(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the writer thread inside the next group commit; returns once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._queue_lock:
            self._queue.append((fn, future))
            start = not self._flushing
            self._flushing = True
        if start:
            loop.run_in_executor(self._writer, self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._queue_lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._flushing = False
                    return
            outcomes = self._run_batch(batch)
            for (_, future), (result, error) in zip(batch, outcomes, strict=True):
                loop.call_soon_threadsafe(_settle_future, future, result, error)

    def _run_batch(
        self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]
    ) -> list[tuple[Any, BaseException | None]]:
        """All writes in one transaction. Should one fail, none took effect: each is then run
        again in a transaction of its own, so only the failing one fails (the rare path)."""
        try:
            return [(result, None) for result in self._transaction([fn for fn, _ in batch])]
        except BaseException as exc:
            if len(batch) == 1:
                return [(None, exc)]
        outcomes: list[tuple[Any, BaseException | None]] = []
        for fn, _ in batch:
            try:
                outcomes.append((self._transaction([fn])[0], None))
            except BaseException as exc:
                outcomes.append((None, exc))
        return outcomes

    def _transaction(self, writes: list[Callable[[], Any]]) -> list[Any]:
        conn = self._wdb.conn
        conn.execute("BEGIN IMMEDIATE")
        self._in_batch = True
        try:
            results = [fn() for fn in writes]
            conn.execute("COMMIT")
            return results
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._in_batch = False

    async def _read(self, fn: Callable[[Database], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader_db()))

    @property
    def _wdb(self) -> Database:
        if self._write_db is None:
            raise RuntimeError("store is not open")
        return self._write_db

    def _reader_db(self) -> Database:
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path)
            self._local.db = db
            with self._reader_lock:
                self._reader_dbs.append(db)
        return db

    @contextmanager
    def _immediate(self) -> Iterator[Database]:
        """A write transaction that takes the write lock at once (BEGIN IMMEDIATE); inside a
        group commit it is the batch's transaction (the batch gives each write a savepoint)."""
        db = self._wdb
        if self._in_batch:
            yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        else:
            db.execute("COMMIT")

    # -- subscriptions -------------------------------------------------------------------------

    async def insert_subscription(self, subscription: Subscription) -> None:
        row = _subscription_row(subscription)

        def insert() -> None:
            with self._immediate() as db:
                _insert(db, "subscriptions", row)

        await self._write(insert)

    async def get_subscription(self, tenant: str | None, id: str) -> Subscription | None:
        """One live subscription; ``tenant=None`` looks across tenants (workers, admins)."""
        sql = "select * from subscriptions where id = ? and deleted_at is null"
        params: list[Any] = [id]
        if tenant is not None:
            sql += " and tenant = ?"
            params.append(tenant)

        def get(db: Database) -> Subscription | None:
            rows = list(db.query(sql, params))
            return _subscription(rows[0]) if rows else None

        return await self._read(get)

    async def list_subscriptions(self, tenant: str) -> list[Subscription]:
        def list_(db: Database) -> list[Subscription]:
            rows = db.query(
                "select * from subscriptions where tenant = ? and deleted_at is null"
                " order by created_at, id",
                [tenant],
            )
            return [_subscription(row) for row in rows]

        return await self._read(list_)

    async def update_subscription(
        self, subscription: Subscription, *, expected_updated_at: datetime | None = None
    ) -> bool:
        """Write the whole row; with ``expected_updated_at``, only if nobody changed it since it
        was read (the gateway may disable a subscription meanwhile). False if it changed."""
        row = _subscription_row(subscription)
        assignments = ", ".join(f"{column} = :{column}" for column in row if column != "id")
        sql = f"update subscriptions set {assignments} where id = :id and deleted_at is null"
        if expected_updated_at is not None:
            sql += " and updated_at = :expected"
        params = {**row, "expected": _ts(expected_updated_at)}

        def update() -> bool:
            with self._immediate() as db:
                return db.execute(sql, params).rowcount == 1

        return await self._write(update)

    async def delete_subscription(self, tenant: str, id: str) -> Subscription | None:
        """Soft delete, so delivery history keeps its subscription; returns what was deleted."""

        def delete() -> Subscription | None:
            with self._immediate() as db:
                rows = list(
                    db.query(
                        "update subscriptions set deleted_at = ?, active = 0"
                        " where id = ? and tenant = ? and deleted_at is null returning *",
                        [_ts(utcnow()), id, tenant],
                    )
                )
            return _subscription(rows[0]) if rows else None

        return await self._write(delete)

    # -- pushes --------------------------------------------------------------------------------

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
    ) -> tuple[PushRecord, bool]:
        """Store a push durably. A push with a known dedupe key, or whose coalesce key matches a
        push still waiting, returns the stored one and False."""
        now = time.time()
        push_id = new_id("psh")
        row = {
            "id": push_id,
            "source": source,
            "kind": kind,
            "dedupe_key": dedupe_key or push_id,
            "coalesce_key": coalesce_key,
            "order_key": order_key,
            "payload": _dumps(payload),
            "state": state,
            "error": error,
            "attempts": 0,
            "next_attempt_at": now,
            "received_at": now,
            "processed_at": now if state != "accepted" else None,
        }

        def insert() -> tuple[PushRecord, bool]:
            with self._immediate() as db:
                found = list(
                    db.query(
                        "select * from pushes where source = ? and dedupe_key = ?",
                        [source, row["dedupe_key"]],
                    )
                )
                if not found and coalesce_key is not None:
                    found = list(
                        db.query(
                            "select * from pushes where source = ? and coalesce_key = ?"
                            " and state = 'accepted' and lease_token is null",
                            [source, coalesce_key],
                        )
                    )
                if found:
                    return _push(found[0]), False
                _insert(db, "pushes", row)
            return _push(row), True

        return await self._write(insert)

    async def get_push(self, id: str) -> PushRecord | None:
        def get(db: Database) -> PushRecord | None:
            rows = list(db.query("select * from pushes where id = ?", [id]))
            return _push(rows[0]) if rows else None

        return await self._read(get)

    async def list_pushes(
        self, state: PushState | None = None, limit: int = 100
    ) -> list[PushRecord]:
        sql = "select * from pushes"
        params: list[Any] = []
        if state is not None:
            sql += " where state = ?"
            params.append(state)
        sql += " order by seq desc limit ?"
        params.append(limit)
        return await self._read(lambda db: [_push(row) for row in db.query(sql, params)])

    async def claim_pushes(self, limit: int, lease_seconds: float) -> list[PushRecord]:
        """Lease due pushes, oldest first, skipping any behind an unfinished earlier push for the
        same booking (so one booking's updates are processed in the order they arrived)."""
        now = time.time()
        token = new_id("lease")

        def claim() -> list[PushRecord]:
            with self._immediate() as db:
                rows = db.query(
                    """
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
                        order by p.seq limit :limit
                    )
                    returning *
                    """,
                    {"token": token, "expires": now + lease_seconds, "now": now, "limit": limit},
                )
                return [_push(row) for row in rows]

        return await self._write(claim)

    async def next_push_due(self) -> float | None:
        def due(db: Database) -> float | None:
            row = db.execute(
                # A leased push's next_attempt_at is its lease expiry, so one index answers this.
                "select min(next_attempt_at) from pushes where state = 'accepted'"
            ).fetchone()
            return None if row[0] is None else float(row[0])

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
        def known(db: Database) -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            for chunk in _chunks(keys, 500):
                marks = ",".join("?" * len(chunk))
                for row in db.query(
                    f"select key, availability from availability_state where key in ({marks})",
                    chunk,
                ):
                    found[row["key"]] = orjson.loads(row["availability"])
            return found

        return await self._read(known)

    async def complete_push(
        self, id: str, lease_token: str, events: list[NewEvent], note: str | None = None
    ) -> int | None:
        """Store a push's events with their history and fan them out to matching subscriptions, and
        mark the push processed, in one transaction. Returns the number of deliveries created, or
        None when the lease was lost (another worker owns the push now)."""

        def complete() -> int | None:
            now = time.time()
            with self._immediate() as db:
                owner = db.execute(
                    "select lease_token, state, source from pushes where id = ?", [id]
                ).fetchone()
                if owner is None or owner[0] != lease_token or owner[1] != "accepted":
                    return None
                source = owner[2]
                subscribers = _Subscribers(db)
                created = 0
                for event in events:
                    data = _with_history(db, event, now)
                    if data is None:
                        continue
                    created += _fan_out(db, event, data, id, source, subscribers, now)
                db.execute(
                    "update pushes set state = 'processed', processed_at = ?, note = ?, error = null,"
                    " lease_token = null, lease_expires_at = null where id = ?",
                    [now, note, id],
                )
                return created

        return await self._write(complete)

    # -- deliveries ----------------------------------------------------------------------------

    async def claim_deliveries(
        self,
        limit: int,
        lease_seconds: float,
        *,
        in_flight: dict[str, int],
        per_subscription: int,
        ordering_max_wait: float,
    ) -> list[DeliveryRecord]:
        """Lease due deliveries with one UPDATE ... RETURNING. A delivery waits while an earlier
        one of the same subject (booking) for the same subscription is unfinished, unless that one
        is older than ``ordering_max_wait``; no subscription gets more than ``per_subscription``
        minus what it has ``in_flight`` already, so one busy subscriber can't fill a batch."""
        now = time.time()
        token = new_id("lease")
        in_flight_json = _dumps(in_flight)

        def claim() -> list[DeliveryRecord]:
            with self._immediate() as db:
                rows = list(
                    db.query(
                        """
                        update deliveries set state = 'leased', lease_token = :token,
                            lease_expires_at = :expires, next_attempt_at = :expires,
                            updated_at = :now
                        where seq in (
                            select seq from (
                                select c.seq, c.subscription_id, c.next_attempt_at,
                                    row_number() over (
                                        partition by c.subscription_id
                                        order by c.next_attempt_at, c.seq
                                    ) as place
                                from (
                                    -- a bounded window of due candidates, oldest first
                                    select d.seq, d.subscription_id, d.next_attempt_at
                                    from deliveries d
                                    -- a leased row's next_attempt_at is its lease expiry
                                    where d.state in ('pending', 'leased')
                                      and d.next_attempt_at <= :now
                                      and not exists (
                                        select 1 from deliveries e
                                        where e.order_key = d.order_key and e.seq < d.seq
                                          and e.state in ('pending', 'leased')
                                          and e.created_at > :now - :max_wait
                                      )
                                    order by d.next_attempt_at, d.seq limit :window
                                ) c
                            ) ranked
                            where ranked.place <= :per_subscription - coalesce(
                                (select value from json_each(:in_flight)
                                 where key = ranked.subscription_id), 0)
                            order by ranked.next_attempt_at, ranked.seq limit :limit
                        )
                        returning *
                        """,
                        {
                            "token": token,
                            "expires": now + lease_seconds,
                            "now": now,
                            "in_flight": in_flight_json,
                            "per_subscription": per_subscription,
                            "window": limit * 8,
                            "max_wait": ordering_max_wait,
                            "limit": limit,
                        },
                    )
                )
                data = _event_data(db, [row["event_seq"] for row in rows])
            return [_delivery(row, data.get(row["event_seq"], {})) for row in rows]

        return await self._write(claim)

    async def next_delivery_due(self) -> float | None:
        def due(db: Database) -> float | None:
            row = db.execute(
                "select min(next_attempt_at) from deliveries where state in ('pending', 'leased')"
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._read(due)

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

        def settle() -> bool:
            now = time.time()
            with self._immediate() as db:
                changed = db.execute(
                    "update deliveries set state = ?, attempts = attempts + 1, next_attempt_at ="
                    " coalesce(?, next_attempt_at), lease_token = null, lease_expires_at = null,"
                    " body = coalesce(body, ?), last_status = ?, last_error = ?, updated_at = ?,"
                    " delivered_at = case when ? = 'delivered' then ? else delivered_at end"
                    " where id = ? and lease_token = ?",
                    [
                        state,
                        next_attempt_at,
                        body,
                        attempt.status,
                        attempt.error,
                        now,
                        state,
                        now,
                        delivery.id,
                        delivery.lease_token,
                    ],
                ).rowcount
                if changed != 1:
                    return False
                _insert(db, "attempts", attempt.model_dump())
                _track_health(
                    db, delivery.subscription_id, state, now, disable_reason, disable_after
                )
            return True

        return await self._write(settle)

    async def skip_delivery(self, delivery: DeliveryRecord, reason: str) -> None:
        def skip() -> None:
            with self._immediate() as db:
                db.execute(
                    "update deliveries set state = 'skipped', last_error = ?, lease_token = null,"
                    " lease_expires_at = null, updated_at = ? where id = ? and lease_token = ?",
                    [reason, time.time(), delivery.id, delivery.lease_token],
                )

        await self._write(skip)

    async def release_deliveries(self, deliveries: list[DeliveryRecord]) -> None:
        """Give leased deliveries back (shutdown), so the next run sends them at once."""

        def release() -> None:
            with self._immediate() as db:
                for delivery in deliveries:
                    db.execute(
                        "update deliveries set state = 'pending', lease_token = null,"
                        " lease_expires_at = null, next_attempt_at = ?"
                        " where id = ? and lease_token = ?",
                        [time.time(), delivery.id, delivery.lease_token],
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
            "select a.*, d.state as delivery_state from attempts a"
            " join deliveries d on d.id = a.delivery_id where a.subscription_id = ?"
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
                out.append((attempt_id, AttemptRecord.model_validate(row), state_now))
            return out

        return await self._read(list_)

    async def list_deliveries(
        self, subscription_id: str, *, state: str | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        sql = "select * from deliveries where subscription_id = ?"
        params: list[Any] = [subscription_id]
        if state is not None:
            sql += " and state = ?"
            params.append(state)
        sql += " order by seq desc limit ?"
        params.append(limit)
        return await self._read(lambda db: [_delivery(r, {}) for r in db.query(sql, params)])

    async def replay_deliveries(self, subscription_id: str, since: float) -> int:
        """Send again every message of a subscription created since ``since`` that is not waiting
        already (delivered, dead or skipped); each keeps its webhook-id."""

        def replay() -> int:
            now = time.time()
            with self._immediate() as db:
                return int(
                    db.execute(
                        "update deliveries set state = 'pending', attempts = 0, next_attempt_at = ?,"
                        " updated_at = ?, body = null where subscription_id = ? and created_at >= ?"
                        " and state in ('delivered', 'dead', 'skipped')",
                        [now, now, subscription_id, since],
                    ).rowcount
                )

        return await self._write(replay)

    async def prune_delivered(self, older_than: float) -> int:
        def prune() -> int:
            with self._immediate() as db:
                ids = "select id from deliveries where state = 'delivered' and delivered_at < ?"
                db.execute(f"delete from attempts where delivery_id in ({ids})", [older_than])
                pruned = int(
                    db.execute(
                        "delete from deliveries where state = 'delivered' and delivered_at < ?",
                        [older_than],
                    ).rowcount
                )
                # Events no message refers to any more are history nobody can replay.
                db.execute(
                    "delete from events where created_at < ? and not exists"
                    " (select 1 from deliveries d where d.event_seq = events.seq)",
                    [older_than],
                )
                return pruned

        return await self._write(prune)

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

    # -- operator tools ------------------------------------------------------------------------

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

        return await self._write(replay)

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


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def _insert(db: Database, table: str, row: dict[str, Any]) -> None:
    """A plain INSERT: sqlite3 caches the statement, where Table.insert re-inspects the table."""
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    db.execute(f"insert into {table} ({columns}) values ({marks})", list(row.values()))


def _settle_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _subscription_row(sub: Subscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "tenant": sub.tenant,
        "event": sub.event,
        "url": sub.url,
        "headers": _dumps(sub.headers),
        "retry_on_error": int(sub.retry_on_error),
        "use_contact_language": int(sub.use_contact_language),
        "capabilities": _dumps(sub.capabilities),
        "template": sub.template,
        "secret": sub.secret,
        "previous_secret": sub.previous_secret,
        "previous_secret_until": _ts(sub.previous_secret_until),
        "products": _dumps(sub.products),
        "active": int(sub.active),
        "disabled_reason": sub.disabled_reason,
        "failing_since": sub.failing_since,
        "created_at": _ts(sub.created_at),
        "updated_at": _ts(sub.updated_at),
    }


def _subscription(row: dict[str, Any]) -> Subscription:
    return Subscription(
        id=row["id"],
        tenant=row["tenant"],
        event=row["event"],
        url=row["url"],
        headers=orjson.loads(row["headers"]),
        retry_on_error=bool(row["retry_on_error"]),
        use_contact_language=bool(row["use_contact_language"]),
        capabilities=orjson.loads(row["capabilities"]),
        template=row["template"],
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_secret_until=_dt(row["previous_secret_until"]),
        products=orjson.loads(row["products"]),
        active=bool(row["active"]),
        disabled_reason=row["disabled_reason"],
        failing_since=row["failing_since"],
        created_at=_dt(row["created_at"]),
        updated_at=_dt(row["updated_at"]),
    )


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


class _Subscribers:
    """The live subscriptions, read once per transaction and grouped by event."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._by_event: dict[str, list[tuple[str, list[str], bool]]] | None = None

    def for_event(self, event: str) -> list[tuple[str, list[str], bool]]:
        if self._by_event is None:
            self._by_event = {}
            for id, name, products, active in self._db.execute(
                "select id, event, products, active from subscriptions where deleted_at is null"
                " order by created_at, id"
            ).fetchall():
                self._by_event.setdefault(name, []).append(
                    (id, orjson.loads(products), bool(active))
                )
        return self._by_event.get(event, [])


def _with_history(db: Database, event: NewEvent, now: float) -> dict[str, Any] | None:
    """The event's body data with what the previous state of its subject says (the booking
    ``diff``), or None when it changes nothing a subscriber would see."""
    if event.event == "booking_update":
        booking = event.data["booking"]
        row = db.execute(
            "select revision, booking, version from booking_state where key = ?",
            [event.state_key],
        ).fetchone()
        previous = orjson.loads(row[1]) if row else None
        if row is not None and event.revision is not None and row[0] == event.revision:
            return None
        if row is not None and row[2] and event.version and event.version < row[2]:
            return None  # an older version of the booking, delivered late by the PMS
        diff = booking_diff(previous, booking)
        if previous is not None and not diff:
            return None
        db.execute(
            "insert into booking_state (key, revision, version, booking, updated_at)"
            " values (?, ?, ?, ?, ?) on conflict (key) do update set revision = excluded.revision,"
            " version = excluded.version, booking = excluded.booking,"
            " updated_at = excluded.updated_at",
            [event.state_key, event.revision, event.version, _dumps(booking), now],
        )
        return {"booking": booking, "diff": diff}
    availability = event.data["availability"]
    row = db.execute(
        "select availability from availability_state where key = ?", [event.state_key]
    ).fetchone()
    if event.only_if_changed and row is not None and orjson.loads(row[0]) == availability:
        return None
    db.execute(
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


def _fan_out(
    db: Database,
    event: NewEvent,
    data: dict[str, Any],
    push_id: str,
    source: str,
    subscribers: _Subscribers,
    now: float,
) -> int:
    """Store the event and one delivery per subscription whose event and products match; a newer
    availability for the same subject supersedes one still waiting. Returns deliveries pending."""
    cursor = db.execute(
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
            _dumps(data),
            now,
        ],
    )
    event_seq = cursor.lastrowid
    pending = 0
    for subscription_id, products, active in subscribers.for_event(event.event):
        if "*" not in products and event.product_id not in products:
            continue
        order_key = f"{subscription_id}|{event.subject}"
        if event.event == "availability_update":
            db.execute(
                "update deliveries set state = 'superseded', updated_at = ?"
                " where order_key = ? and state = 'pending'",
                [now, order_key],
            )
        state = "pending" if active else "skipped"
        db.execute(
            "insert into deliveries (id, event_seq, subscription_id, event, order_key, state,"
            " next_attempt_at, created_at, updated_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                new_id("msg"),
                event_seq,
                subscription_id,
                event.event,
                order_key,
                state,
                now,
                now,
                now,
            ],
        )
        pending += state == "pending"
    return pending


def _event_data(db: Database, seqs: list[int]) -> dict[int, dict[str, Any]]:
    data: dict[int, dict[str, Any]] = {}
    unique = sorted(set(seqs))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for seq, text in db.execute(f"select seq, data from events where seq in ({marks})", chunk):
            data[seq] = orjson.loads(text)
    return data


def _delivery(row: dict[str, Any], data: dict[str, Any]) -> DeliveryRecord:
    fields = {k: row[k] for k in DeliveryRecord.model_fields if k in row and k != "data"}
    return DeliveryRecord(**fields, data=data)


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
