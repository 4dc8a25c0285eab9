"""Delivery concurrency slots, owned by the delivery worker on the event loop.

The worker tells the store how much room it has (``room``), takes a slot for each delivery the claim
leased, and frees it when the request ends. Claims run one at a time and slots are only freed
meanwhile, so the room a claim was given never overshoots the overall or per-subscription limits.
"""

from __future__ import annotations

import threading
from collections import Counter

from gateway.store.interface import ClaimRoom


class DeliverySlots:
    def __init__(self, total: int, per_subscription: int) -> None:
        self.total = total
        self.per_subscription = per_subscription
        self._lock = threading.Lock()
        self._held: dict[int, str] = {}  # delivery seq -> subscription id
        self._per_subscription: Counter[str] = Counter()
        self._closed = False

    def free(self) -> int:
        """Slots free overall (0 once closed)."""
        with self._lock:
            return 0 if self._closed else self.total - len(self._held)

    def room(self) -> ClaimRoom:
        """What a claim may lease now (nothing once closed)."""
        with self._lock:
            total = 0 if self._closed else self.total - len(self._held)
            return ClaimRoom(total, self.per_subscription, dict(self._per_subscription))

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return dict(self._per_subscription)

    def can_take(self, subscription_id: str) -> bool:
        with self._lock:
            return (
                not self._closed
                and len(self._held) < self.total
                and self._per_subscription[subscription_id] < self.per_subscription
            )

    def take(self, seq: int, subscription_id: str) -> None:
        with self._lock:
            if seq not in self._held:
                self._held[seq] = subscription_id
                self._per_subscription[subscription_id] += 1

    def release(self, seq: int) -> bool:
        """Free a delivery's slot; False when it held none (already freed)."""
        with self._lock:
            subscription_id = self._held.pop(seq, None)
            if subscription_id is None:
                return False
            self._per_subscription[subscription_id] -= 1
            if self._per_subscription[subscription_id] <= 0:
                del self._per_subscription[subscription_id]
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
