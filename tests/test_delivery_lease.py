"""Fresh deliveries leased straight to the delivery worker by the fan-out, within its slots.

A processed push hands its deliveries to the worker in the transaction that stores them, so the
happy path needs no claim query; the slots (overall and per subscription) and the per-booking order
must hold exactly as they do for claims.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.delivery.slots import DeliveryLease, DeliverySlots
from gateway.models import AttemptRecord, DeliveryRecord, Subscription
from gateway.store import SQLiteStore, utcnow
from tests.receivers import booking_event, emit

LEASE_SECONDS = 60.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "lease.db")
    await store.open()
    yield store
    await store.close()


async def subscribe(store: SQLiteStore, id: str, *, active: bool = True) -> None:
    now = utcnow()
    await store.insert_subscription(
        Subscription(
            id=id,
            tenant="t",
            event="booking_update",
            url="https://example.com/hook",
            secret="whsec_abc",
            products=["*"],
            active=active,
            created_at=now,
            updated_at=now,
        )
    )


def rows(store: SQLiteStore) -> dict[str, tuple[str, str | None]]:
    """message id -> (state, lease token), read from the file by another connection."""
    conn = sqlite3.connect(store.path)
    try:
        found = conn.execute("select id, state, lease_token from deliveries").fetchall()
    finally:
        conn.close()
    return {id: (state, token) for id, state, token in found}


async def deliver(store: SQLiteStore, record: DeliveryRecord, slots: DeliverySlots) -> None:
    attempt = AttemptRecord(
        delivery_id=record.id,
        subscription_id=record.subscription_id,
        attempt=1,
        attempted_at=time.time(),
        outcome="delivered",
        status=200,
    )
    assert await store.settle_delivery(record, attempt, state="delivered")
    slots.release(record.seq)


def lease_for(slots: DeliverySlots) -> DeliveryLease:
    return DeliveryLease(slots, LEASE_SECONDS, ordering_max_wait=3600)


async def test_fan_out_leases_fresh_deliveries_as_far_as_the_slots_allow(
    store: SQLiteStore,
) -> None:
    for id in ("a", "b", "c"):
        await subscribe(store, id)
    await subscribe(store, "off", active=False)
    slots = DeliverySlots(total=2, per_subscription=16)
    lease = lease_for(slots)

    assert await emit(store, [booking_event("s:b1")], lease) == 3

    stored = rows(store)
    assert len(stored) == 4
    assert len(lease.records) == 2 and len(slots) == 2
    for record in lease.records:
        assert record.state == "leased" and record.data["booking"]["notes"] == "update 0"
        assert stored[record.id] == ("leased", record.lease_token)
        assert slots.holds(record.seq)
    states = sorted(state for state, _ in stored.values())
    assert states == ["leased", "leased", "pending", "skipped"]

    # The worker is full: a claim takes nothing until a slot is freed, then the waiting one.
    assert await store.claim_deliveries(slots, LEASE_SECONDS, ordering_max_wait=3600) == []
    await deliver(store, lease.records[0], slots)
    [claimed] = await store.claim_deliveries(slots, LEASE_SECONDS, ordering_max_wait=3600)
    assert stored[claimed.id][0] == "pending"
    assert slots.holds(claimed.seq) and len(slots) == 2


async def test_per_subscription_slots_bound_the_fan_out_and_the_claims_together(
    store: SQLiteStore,
) -> None:
    await subscribe(store, "a")
    slots = DeliverySlots(total=10, per_subscription=1)
    lease = lease_for(slots)

    await emit(store, [booking_event("s:b1"), booking_event("s:b2")], lease)

    assert [r.order_key for r in lease.records] == ["a|s:b1"]
    assert slots.in_flight() == {"a": 1}
    assert await store.claim_deliveries(slots, LEASE_SECONDS, ordering_max_wait=3600) == []
    await deliver(store, lease.records[0], slots)
    [claimed] = await store.claim_deliveries(slots, LEASE_SECONDS, ordering_max_wait=3600)
    assert claimed.order_key == "a|s:b2"


async def test_an_update_waiting_behind_an_unfinished_one_of_its_booking_is_not_leased(
    store: SQLiteStore,
) -> None:
    await subscribe(store, "a")
    slots = DeliverySlots(total=10, per_subscription=10)
    first, second = lease_for(slots), lease_for(slots)

    await emit(store, [booking_event("s:b1", 1)], first)
    await emit(store, [booking_event("s:b1", 2)], second)

    assert len(first.records) == 1 and second.records == []
    # The second one goes out only once the first is finished, through a claim.
    assert await store.claim_deliveries(slots, LEASE_SECONDS, ordering_max_wait=3600) == []
    await deliver(store, first.records[0], slots)
    [claimed] = await store.claim_deliveries(slots, LEASE_SECONDS, ordering_max_wait=3600)
    assert claimed.data["booking"]["notes"] == "update 2"


async def test_a_stopping_worker_gets_nothing_leased(store: SQLiteStore) -> None:
    await subscribe(store, "a")
    slots = DeliverySlots(total=10, per_subscription=10)
    slots.close()
    lease = lease_for(slots)

    assert await emit(store, [booking_event("s:b1")], lease) == 1

    assert lease.records == [] and len(slots) == 0
    assert [state for state, _ in rows(store).values()] == ["pending"]


async def test_a_rolled_back_fan_out_gives_its_slots_back(store: SQLiteStore) -> None:
    await subscribe(store, "a")
    slots = DeliverySlots(total=10, per_subscription=10)
    lease = lease_for(slots)
    # An event whose data can't be stored fails the transaction after the delivery was leased.
    broken = booking_event("s:b2")
    broken.data["booking"]["unstorable"] = object()

    with pytest.raises(TypeError):
        await emit(store, [booking_event("s:b1"), broken], lease)

    assert lease.records == [] and len(slots) == 0
    assert rows(store) == {}


def test_slots_hold_both_limits_and_free_each_delivery_once() -> None:
    slots = DeliverySlots(total=2, per_subscription=1)
    slots.take(1, "a")
    assert not slots.can_take("a") and slots.can_take("b")
    slots.take(2, "b")
    assert not slots.can_take("c") and slots.free() == 0
    assert slots.release(1) is True
    assert slots.release(1) is False
    assert slots.free() == 1 and slots.in_flight() == {"b": 1}


async def test_a_subscriber_at_its_limit_with_a_deep_backlog_does_not_starve_the_others(
    store: SQLiteStore,
) -> None:
    await subscribe(store, "slow")
    events = [booking_event(f"s:slow{n}") for n in range(300)]
    await emit(store, events)
    await subscribe(store, "fast")  # subscribed later: its message is behind all of slow's
    await emit(store, [booking_event("s:fast")])
    slots = DeliverySlots(total=10, per_subscription=2)

    claimed = await store.claim_deliveries(slots, LEASE_SECONDS, ordering_max_wait=3600)

    assert sorted(record.subscription_id for record in claimed) == ["fast", "slow", "slow"]
    # Once slow is at its limit, later claims still find fast's next message.
    again = await emit(store, [booking_event("s:fast2")])
    assert again == 2
    [next_one] = await store.claim_deliveries(slots, LEASE_SECONDS, ordering_max_wait=3600)
    assert next_one.subscription_id == "fast"
