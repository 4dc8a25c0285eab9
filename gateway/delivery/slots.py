"""Delivery concurrency slots, shared by the delivery worker and the store's writer thread.

Slots are taken only on the writer thread, inside the transaction that leases a delivery (a claim,
or a fan-out that hands fresh messages straight to the worker), and freed on the event loop when a
request ends. One taker and a lock keep the overall and per-subscription limits exact however
claims and fan-outs interleave.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from gateway.models import DeliveryRecord


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


@dataclass
class DeliveryLease:
    """Asks the store to lease the deliveries a push creates straight to this process's delivery
    worker, as far as its slots allow, so a fresh message skips the claim query. After the call,
    ``records`` holds the leased messages (with their slots taken); the caller must start them."""

    slots: DeliverySlots
    seconds: float
    ordering_max_wait: float
    records: list[DeliveryRecord] = field(default_factory=list)

    def reset(self) -> None:
        """Undo what an attempt took: its transaction was rolled back (a group commit is retried
        write by write, so the attempt may run again)."""
        for record in self.records:
            self.slots.release(record.seq)
        self.records.clear()
