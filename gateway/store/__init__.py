"""Durable storage: this package is the only place that speaks SQL.

``SQLiteStore`` implements ``gateway.storage.Store`` on one SQLite file through sqlite-utils.
"""

from gateway.store.base import connect, new_id, utcnow
from gateway.store.deliveries import DeliveryStore
from gateway.store.pushes import PushStore
from gateway.store.subscriptions import SubscriptionStore


class SQLiteStore(SubscriptionStore, PushStore, DeliveryStore):
    """The embedded default: one SQLite file in WAL mode."""


__all__ = ["SQLiteStore", "connect", "new_id", "utcnow"]
