"""Helpers for the upgrade tests: rows written straight into a database migrated only part way,
as an older release wrote them (the store's own methods speak the newest schema)."""

from __future__ import annotations

from sqlite_utils import Database

from gateway.models import Subscription
from gateway.store.sqlite.subscriptions import _subscription_row


def insert_subscription(db: Database, subscription: Subscription) -> None:
    row = _subscription_row(subscription)
    db.execute(
        f"insert into subscriptions ({', '.join(row)}) values ({', '.join('?' * len(row))})",
        list(row.values()),
    )
