"""Helpers for the upgrade tests: rows written straight into a database migrated only part way,
as an older release wrote them (the store's own methods speak the newest schema)."""

from __future__ import annotations

from pathlib import Path

from sqlite_utils import Database

from gateway.models import Subscription
from gateway.store import connect, utcnow
from gateway.store.sqlite.migrations import migrations
from gateway.store.sqlite.subscriptions import _subscription_row


def migrated_until(path: Path, migration: str) -> Database:
    """A database file with every migration before ``migration`` applied, in WAL mode."""
    db = connect(path)
    db.enable_wal()
    migrations.apply(db, stop_before=migration)
    return db


def old_subscription(tenant: str, url: str) -> Subscription:
    """The one booking_update subscription the upgrade tests' databases hold (id ``sub_old``)."""
    return Subscription(
        id="sub_old",
        tenant=tenant,
        event="booking_update",
        url=url,
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        created_at=utcnow(),
        updated_at=utcnow(),
    )


def insert_subscription(db: Database, subscription: Subscription) -> None:
    row = _subscription_row(subscription)
    db.execute(
        f"insert into subscriptions ({', '.join(row)}) values ({', '.join('?' * len(row))})",
        list(row.values()),
    )
