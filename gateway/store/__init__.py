"""Durable storage: this package is the only place that speaks SQL.

``SQLiteStore`` implements ``gateway.store.interface.Store`` on one SQLite file through sqlite-utils.
"""

from gateway.store.sqlite.base import connect, new_id, utcnow
from gateway.store.sqlite.deliveries import DeliveryStore
from gateway.store.sqlite.erase import EraseStore
from gateway.store.sqlite.operations import OperationsStore
from gateway.store.sqlite.pushes import PushStore
from gateway.store.sqlite.reads import ReadStore
from gateway.store.sqlite.room_maps import RoomMapStore
from gateway.store.sqlite.subscriptions import SubscriptionStore


class SQLiteStore(
    SubscriptionStore,
    PushStore,
    DeliveryStore,
    RoomMapStore,
    ReadStore,
    OperationsStore,
    EraseStore,  # and the RetentionStore it builds on
):
    """The embedded default: one SQLite file in WAL mode."""


__all__ = ["SQLiteStore", "connect", "new_id", "utcnow"]
