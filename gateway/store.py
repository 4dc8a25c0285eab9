"""Durable storage: the only module that speaks SQL.

``Store`` is the interface handlers and workers use; ``SQLiteStore`` implements it on one SQLite file
through sqlite-utils. Every write runs on a single writer thread (so the event loop never blocks on a
write and SQLite never sees two writers from this process); reads run on a small pool of reader
threads, each with its own connection, which WAL lets proceed while the writer writes.

A PostgreSQL implementation can sit beside ``SQLiteStore`` and satisfy the same Protocol.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlite_utils import Database

from gateway.migrations import migrations
from gateway.models import Subscription

T = TypeVar("T")


class Store(Protocol):
    """What the rest of the gateway may ask of storage."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert_subscription(self, subscription: Subscription) -> None: ...

    async def get_subscription(self, tenant: str | None, id: str) -> Subscription | None: ...

    async def list_subscriptions(self, tenant: str) -> list[Subscription]: ...

    async def update_subscription(self, subscription: Subscription) -> None: ...

    async def delete_subscription(self, tenant: str, id: str) -> Subscription | None: ...


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

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        await self._write(self._open_writer)

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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, fn)

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
        """A write transaction that takes the write lock at once (BEGIN IMMEDIATE)."""
        db = self._wdb
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
                db["subscriptions"].insert(row)

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

    async def update_subscription(self, subscription: Subscription) -> None:
        row = _subscription_row(subscription)

        def update() -> None:
            with self._immediate() as db:
                db["subscriptions"].update(subscription.id, row)

        await self._write(update)

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


def _subscription_row(sub: Subscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "tenant": sub.tenant,
        "event": sub.event,
        "url": sub.url,
        "headers": json.dumps(sub.headers),
        "retry_on_error": int(sub.retry_on_error),
        "use_contact_language": int(sub.use_contact_language),
        "capabilities": json.dumps(sub.capabilities),
        "template": sub.template,
        "secret": sub.secret,
        "previous_secret": sub.previous_secret,
        "previous_secret_until": _ts(sub.previous_secret_until),
        "products": json.dumps(sub.products),
        "active": int(sub.active),
        "disabled_reason": sub.disabled_reason,
        "created_at": _ts(sub.created_at),
        "updated_at": _ts(sub.updated_at),
    }


def _subscription(row: dict[str, Any]) -> Subscription:
    return Subscription(
        id=row["id"],
        tenant=row["tenant"],
        event=row["event"],
        url=row["url"],
        headers=json.loads(row["headers"]),
        retry_on_error=bool(row["retry_on_error"]),
        use_contact_language=bool(row["use_contact_language"]),
        capabilities=json.loads(row["capabilities"]),
        template=row["template"],
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_secret_until=_dt(row["previous_secret_until"]),
        products=json.loads(row["products"]),
        active=bool(row["active"]),
        disabled_reason=row["disabled_reason"],
        created_at=_dt(row["created_at"]),
        updated_at=_dt(row["updated_at"]),
    )
