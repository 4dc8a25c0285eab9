"""The storage interface: what handlers and workers may ask of a store.

``gateway.store.SQLiteStore`` implements it on the embedded SQLite file; a PostgreSQL store for
several processes can implement the same Protocol without touching handlers or workers. Every state
change of a leased row (push or delivery) is fenced by its lease token. Any method may raise
``gateway.store.errors.StorageUnavailable`` when storage itself fails (disk full, locked, read-only):
nothing was changed, and the same call may succeed later.

A store knows nothing of workers: it stores, leases and settles rows. The delivery worker owns its
concurrency slots on the event loop; it is woken when a push's deliveries are stored and claims
them, telling the store how much room it has (``ClaimRoom``) and taking its slots for what comes back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from gateway.models import (
    AttemptRecord,
    BookingFilter,
    DeliveryRecord,
    DeliveryState,
    LatestBooking,
    NewEvent,
    PushRecord,
    PushState,
    RoomMap,
    RoomMapUpdate,
    Subscription,
)
from gateway.store.observations import Activity, SubscriptionHealth


class RoomMapConflict(Exception):
    """A room map changed since it was read (another push for the same booking got there first);
    nothing was stored, and the push must be processed again."""


@dataclass(frozen=True)
class ClaimRoom:
    """How much a delivery claim may lease: ``total`` messages at most, and for each subscription
    no more than ``per_subscription`` minus what it already has ``in_flight``. Subscriptions of one
    tenant (``tenant_of``) also share ``per_tenant`` minus what the tenant has in flight, so one
    tenant's slow subscribers can't take every slot."""

    total: int
    per_subscription: int
    in_flight: Mapping[str, int] = field(default_factory=dict)
    per_tenant: int | None = None
    tenant_of: Mapping[str, str] = field(default_factory=dict)
    tenant_in_flight: Mapping[str, int] = field(default_factory=dict)

    def free(self, subscription_id: str) -> int:
        room = self.per_subscription - self.in_flight.get(subscription_id, 0)
        tenant = self.tenant_of.get(subscription_id)
        if self.per_tenant is not None and tenant is not None:
            room = min(room, self.per_tenant - self.tenant_in_flight.get(tenant, 0))
        return max(room, 0)

    def tally(self) -> ClaimTally:
        """Counts what one claim leases, so several subscriptions of a tenant share its room."""
        return ClaimTally(self)


@dataclass
class ClaimTally:
    room: ClaimRoom
    by_subscription: Counter[str] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)

    def free(self, subscription_id: str) -> int:
        room = self.room.free(subscription_id) - self.by_subscription[subscription_id]
        tenant = self.room.tenant_of.get(subscription_id)
        if self.room.per_tenant is not None and tenant is not None:
            used = self.room.tenant_in_flight.get(tenant, 0) + self.by_tenant[tenant]
            room = min(room, self.room.per_tenant - used)
        return max(room, 0)

    def took(self, subscription_id: str, count: int) -> None:
        self.by_subscription[subscription_id] += count
        tenant = self.room.tenant_of.get(subscription_id)
        if tenant is not None:
            self.by_tenant[tenant] += count


@dataclass
class HandOver:
    """Room the delivery worker lends one push's fan-out, so the messages it stores come back
    already leased, with their event data, without a claim round trip (as ingest leases a push
    to the processor). The store leases fresh messages as a claim of ``room`` would: within its
    limits, none whose subscription has older messages due (those go first, by a claim) and none
    behind an unfinished message of its ``order_key``; the rest are stored pending. ``leased``
    holds what was leased once the transaction committed; a store may lease none."""

    room: ClaimRoom
    lease_seconds: float
    leased: list[DeliveryRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Settlement:
    """One attempt's outcome for a leased delivery: the attempt to log and the message's new
    state. ``body`` is what was sent; a store keeps it while the message waits for another
    attempt (state ``pending``), so the retry sends the same bytes. A ``disable_reason`` (410
    Gone) disables the subscription; a dead message starts its failing streak, which disables it
    once it has lasted ``disable_after`` seconds; a delivered one ends the streak."""

    delivery: DeliveryRecord
    attempt: AttemptRecord
    state: DeliveryState
    next_attempt_at: float | None = None
    body: bytes | None = None
    disable_reason: str | None = None
    disable_after: float | None = None


@dataclass(frozen=True)
class Retention:
    """What maintenance deletes, as cutoffs; None keeps that kind of data.

    - ``messages_before`` (Unix seconds): finished messages (delivered, dead, skipped, superseded)
      that finished before it, with their attempts and kept bodies; then events created before
      it that no message refers to any more.
    - ``pushes_before`` / ``failed_pushes_before``: pushes processed / failed before it, raw
      bodies and all (a failed push replayed meanwhile is waiting again, not failed).
    - ``stays_before`` ("YYYY-MM-DD"): the state kept per booking whose stay ended before that
      day (its last Booking, version, room map), and the availability of days before it.
    - ``state_untouched_before`` (Unix seconds): with ``stays_before``, a booking's state goes only
      when it was also last updated before this, so a PMS re-sending an old booking keeps its
      repeats recognised (dropping the state at once would send the same version again).
    """

    messages_before: float | None = None
    pushes_before: float | None = None
    failed_pushes_before: float | None = None
    stays_before: str | None = None
    state_untouched_before: float | None = None


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    async def check_writable(self) -> None:
        """A small real write; raises ``StorageUnavailable`` when storage can't take writes now
        (or could not a moment ago). For /readyz."""

    # -- subscriptions (tenant-scoped; tenant=None only for workers and operators) -------------

    async def insert_subscription(
        self, subscription: Subscription, *, max_per_tenant: int | None = None
    ) -> bool:
        """Store a new subscription; False (nothing stored) when its tenant already has
        ``max_per_tenant`` live ones. Counted and inserted in one transaction."""

    async def get_subscription(self, tenant: str | None, id: str) -> Subscription | None: ...

    async def list_subscriptions(self, tenant: str) -> list[Subscription]: ...

    async def subscription_tenants(self) -> list[str]:
        """The tenants that have live subscriptions (to find ones no api key names any more)."""

    async def update_subscription(
        self, subscription: Subscription, *, expected_updated_at: datetime | None = None
    ) -> bool:
        """False when the row changed since ``expected_updated_at`` (optimistic concurrency)."""

    async def delete_subscription(self, tenant: str, id: str) -> Subscription | None: ...

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
        lease_seconds: float | None = None,
    ) -> tuple[PushRecord, bool]:
        """Store durably; returns (push, False) for a push already known. With ``lease_seconds``
        a new push that nothing is ahead of comes back leased to the caller."""

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
        """Store a push processed before it was stored (a self-contained push, translated in the
        ingest request), in one transaction; returns (push, created, deliveries to send). Its
        fresh messages are leased within ``hand_over``'s room, as ``complete_push`` leases them.

        A repeat (dedupe key, or a coalesce key still waiting) is (stored push, False, 0), as
        with ``insert_push``. A push of an ``order_key`` with an unfinished push is stored
        ``accepted`` and unleased, to wait its turn (the events are dropped; it is processed
        again after that one): (push, True, 0). Any other is stored ``processed`` under ``id``
        with its events, history, room maps and deliveries, as ``complete_push`` stores them.
        Raises ``RoomMapConflict``, storing nothing, when a room map moved on since it was read."""

    async def get_push(self, id: str) -> PushRecord | None: ...

    async def list_pushes(
        self, state: PushState | None = None, limit: int = 100
    ) -> list[PushRecord]: ...

    async def claim_pushes(self, limit: int, lease_seconds: float) -> list[PushRecord]: ...

    async def next_push_due(self) -> float | None: ...

    async def defer_push(self, id: str, lease_token: str, error: str, delay: float) -> bool: ...

    async def fail_push(self, id: str, lease_token: str | None, error: str) -> bool: ...

    async def replay_push(self, id: str) -> PushRecord | None: ...

    async def replay_failed_pushes(self, ids: list[str] | None = None) -> list[str]: ...

    async def known_availability(self, keys: list[str]) -> dict[str, dict[str, Any]]: ...

    async def get_room_map(self, source: str, booking: str) -> tuple[RoomMap, int] | None:
        """The room map kept for one of ``source``'s bookings, and its generation (bumped by every
        write); None for a booking nothing was kept for."""

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
        """Events + history + fan-out (deliveries stored pending, or leased within
        ``hand_over``'s room) + room maps + push processed, atomically; returns the number of
        deliveries to send (leased ones included), or None if the lease was lost.
        Raises ``RoomMapConflict``, storing nothing, when a room map's generation moved on since
        it was read."""

    # -- reconciliation reads (what was last sent; the caller scopes them to its products) -------

    async def latest_booking(
        self, uuid: str, products: Sequence[str] | None = None
    ) -> LatestBooking | None:
        """The last booking sent with this uuid, if its productId is in ``products`` (None or
        ``"*"``: any)."""

    async def latest_bookings(self, where: BookingFilter) -> list[LatestBooking]:
        """The last booking sent per PMS booking (room) matching ``where``, newest first by when
        the gateway recorded it, at most ``where.limit``, after the ``where.after`` position."""

    async def latest_availability(
        self, product_id: str, option_id: str, first_day: str, last_day: str
    ) -> list[dict[str, Any]]:
        """The last OCTO Availability sent per day of one product and option, days
        ``first_day``..``last_day`` (``YYYY-MM-DD``, both included), in day order."""

    # -- deliveries ----------------------------------------------------------------------------

    async def claim_deliveries(
        self, room: ClaimRoom, lease_seconds: float, *, ordering_max_wait: float
    ) -> list[DeliveryRecord]:
        """Lease due deliveries within ``room``: subscriptions with the oldest due message first,
        one at its limit passed over however deep its backlog; a message waits while an earlier
        one of its ``order_key`` is unfinished, unless that one is older than
        ``ordering_max_wait`` seconds."""

    async def next_delivery_due(self) -> float | None: ...

    async def settle_deliveries(self, settlements: list[Settlement]) -> list[bool]:
        """Record each attempt and its delivery's new state, fenced by the delivery's lease token
        (False for one whose lease was lost: nothing of it is recorded)."""

    async def skip_delivery(self, delivery: DeliveryRecord, reason: str) -> None: ...

    async def release_deliveries(self, deliveries: list[DeliveryRecord]) -> None: ...

    async def list_attempts(
        self,
        subscription_id: str,
        *,
        state: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[tuple[int, AttemptRecord, str]]: ...

    async def list_deliveries(
        self, subscription_id: str, *, state: str | None = None, limit: int = 50
    ) -> list[DeliveryRecord]: ...

    async def replay_deliveries(self, subscription_id: str, since: float) -> int: ...

    async def replay_progress(self, subscription_id: str, since: float) -> tuple[int, int]: ...

    async def apply_retention(self, retention: Retention) -> dict[str, int]:
        """Delete what ``retention`` says has been kept long enough, a little at a time (other
        writes go in between); returns how many rows went, per table."""

    async def release_free_pages(self) -> int:
        """Give the space of deleted rows back to the file system, a little at a time; returns
        how many pages (of the store's page size) were given back."""

    async def erase_booking(self, source: str, booking_id: str) -> dict[str, int]:
        """Remove one PMS booking's personal data everywhere: the pushes that carry it, its
        events with their messages, attempts and kept bodies, its state and room map. Deleted
        content is overwritten, the space given back and the write-ahead log emptied. Returns how
        many rows went, per table."""

    async def queue_stats(self) -> dict[str, float]: ...

    async def log_bytes(self) -> int | None:
        """The size of the store's write-ahead log file (SQLite's ``-wal``), for ``/metrics``; None
        where the database server keeps its own (PostgreSQL)."""

    # -- for operators (the console): figures and single messages ------------------------------

    async def subscription_health(
        self, subscription_ids: list[str], since: float
    ) -> dict[str, SubscriptionHealth]:
        """Each subscription's last attempt, and its attempts and deliveries since ``since``."""

    async def get_delivery(self, subscription_id: str, id: str) -> DeliveryRecord | None:
        """One message of that subscription, with its event's data; None if not its own."""

    async def message_attempts(self, subscription_id: str, id: str) -> list[AttemptRecord]:
        """Every attempt at one message of that subscription, oldest first."""

    async def replay_delivery(self, subscription_id: str, id: str) -> bool:
        """Send one finished message again (as ``replay_deliveries``); False if none was."""

    async def push_counts(self) -> dict[str, int]:
        """How many stored pushes are in each state."""

    async def delivery_activity(self, since: float, *, max_rows: int = 50_000) -> Activity:
        """Attempts per minute by outcome and push-to-delivery latency since ``since``."""


@runtime_checkable
class Notifying(Protocol):
    """A store shared by several processes that tells this one when work it could take was
    stored elsewhere (PostgreSQL's LISTEN/NOTIFY). Workers still poll; this only wakes them early."""

    def on_pushes_waiting(self, wake: Callable[[], None]) -> None: ...

    def on_deliveries_waiting(self, wake: Callable[[], None]) -> None: ...
