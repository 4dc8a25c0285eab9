"""Delivery concurrency slots, owned by the delivery worker on the event loop.

The worker tells the store how much room it has (``room``), takes a slot for each delivery the claim
leased, and frees it when the request ends. Claims run one at a time and slots are only freed
meanwhile, so the room a claim was given never overshoots the overall, per-subscription or
per-tenant limits. A ``/test`` send takes a slot too (``try_take``), so the connection pool sized
to the slots never makes a delivery wait for a connection.

Tenants: the slots learn which tenant owns a subscription (``assign``) when the worker starts, when
a subscription is created here, and when the worker reads one to deliver to it. A subscription not
yet known (created by another process) counts as a tenant of its own until then.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter

from gateway.store.interface import ClaimRoom


class DeliverySlots:
    def __init__(self, total: int, per_subscription: int, per_tenant: int | None = None) -> None:
        self.total = total
        self.per_subscription = per_subscription
        self.per_tenant = per_tenant
        self._lock = threading.Lock()
        self._held: dict[int, tuple[str, str | None]] = {}  # seq -> (subscription, tenant)
        self._per_subscription: Counter[str] = Counter()
        self._per_tenant: Counter[str] = Counter()
        self._tenant_of: dict[str, str] = {}
        self._test_keys = itertools.count(-1, -1)  # /test sends: keys no delivery seq uses
        self._closed = False

    def assign(self, subscription_id: str, tenant: str) -> None:
        """Record the tenant a subscription belongs to (it never changes)."""
        self._tenant_of[subscription_id] = tenant

    def unassign(self, subscription_id: str) -> None:
        """Forget a deleted subscription's tenant (a slot it holds remembers its own)."""
        self._tenant_of.pop(subscription_id, None)

    def free(self) -> int:
        """Slots free overall (0 once closed)."""
        with self._lock:
            return 0 if self._closed else self.total - len(self._held)

    def room(self) -> ClaimRoom:
        """What a claim may lease now (nothing once closed)."""
        with self._lock:
            total = 0 if self._closed else self.total - len(self._held)
            return ClaimRoom(
                total,
                self.per_subscription,
                dict(self._per_subscription),
                per_tenant=self.per_tenant,
                # Not copied: the store only looks keys up (safe while the loop changes it).
                tenant_of=self._tenant_of,
                tenant_in_flight=dict(self._per_tenant),
            )

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return dict(self._per_subscription)

    def tenant_in_flight(self) -> dict[str, int]:
        with self._lock:
            return dict(self._per_tenant)

    def can_take(self, subscription_id: str) -> bool:
        with self._lock:
            return self._can_take(subscription_id, self._tenant_of.get(subscription_id))

    def _can_take(self, subscription_id: str, tenant: str | None) -> bool:
        return (
            not self._closed
            and len(self._held) < self.total
            and self._per_subscription[subscription_id] < self.per_subscription
            and (
                self.per_tenant is None
                or tenant is None
                or self._per_tenant[tenant] < self.per_tenant
            )
        )

    def take(self, seq: int, subscription_id: str) -> None:
        with self._lock:
            self._take(seq, subscription_id, self._tenant_of.get(subscription_id))

    def _take(self, seq: int, subscription_id: str, tenant: str | None) -> None:
        if seq not in self._held:
            self._held[seq] = (subscription_id, tenant)
            self._per_subscription[subscription_id] += 1
            if tenant is not None:
                self._per_tenant[tenant] += 1

    def try_take(self, subscription_id: str, tenant: str) -> int | None:
        """A slot for a send outside the queue (``/test``): its key for ``release``, or None when
        the overall, subscription's or tenant's limit is reached."""
        with self._lock:
            self._tenant_of[subscription_id] = tenant
            if not self._can_take(subscription_id, tenant):
                return None
            key = next(self._test_keys)
            self._take(key, subscription_id, tenant)
            return key

    def release(self, seq: int) -> bool:
        """Free a delivery's slot; False when it held none (already freed)."""
        with self._lock:
            held = self._held.pop(seq, None)
            if held is None:
                return False
            subscription_id, tenant = held
            _decrement(self._per_subscription, subscription_id)
            if tenant is not None:
                _decrement(self._per_tenant, tenant)
            return True

    def holds(self, seq: int) -> bool:
        with self._lock:
            return seq in self._held

    def close(self) -> None:
        """Take no more (the worker is stopping); held slots are still released as usual."""
        with self._lock:
            self._closed = True

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
