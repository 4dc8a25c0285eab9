"""The PostgreSQL store: any number of gateway processes on one database.

Needs the ``postgres`` extra (asyncpg): ``pip install 'octo-gateway[postgres]'``.
"""

from gateway.store.postgres.base import guard_outages
from gateway.store.postgres.deliveries import DeliveryStore
from gateway.store.postgres.operations import OperationsStore
from gateway.store.postgres.pushes import PushStore
from gateway.store.postgres.reads import ReadStore
from gateway.store.postgres.retention import RetentionStore
from gateway.store.postgres.room_maps import RoomMapStore
from gateway.store.postgres.subscriptions import SubscriptionStore


@guard_outages
class PostgresStore(
    SubscriptionStore,
    PushStore,
    DeliveryStore,
    RoomMapStore,
    ReadStore,
    OperationsStore,
    RetentionStore,
):
    """Implements ``gateway.store.interface.Store`` on a PostgreSQL database."""


__all__ = ["PostgresStore"]
