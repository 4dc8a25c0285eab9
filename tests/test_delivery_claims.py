"""Delivery claims within the room the worker gives them.

The store knows nothing of the worker's slots: fan-out stores deliveries pending, the worker is woken
and claims them, passing how much room it has overall and per subscription (``ClaimRoom``). The
limits and the per-booking order must hold exactly.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.delivery.slots import DeliverySlots
from gateway.models import AttemptRecord, DeliveryRecord, Subscription
from gateway.store import SQLiteStore, utcnow
from gateway.store.interface import ClaimRoom, Settlement
from tests.receivers import booking_event, emit

LEASE_SECONDS = 60.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "lease.db")
    await store.open()
    yield store
    await store.close()


async def subscribe(store: SQLiteStore, id: str, *, active: bool = True, tenant: str = "t") -> None:
    now = utcnow()
    await store.insert_subscription(
        Subscription(
            id=id,
            tenant=tenant,
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
    assert await store.settle_deliveries([Settlement(record, attempt, "delivered")]) == [True]
    slots.release(record.seq)


async def claim(store: SQLiteStore, slots: DeliverySlots) -> list[DeliveryRecord]:
    """A claim as the worker makes one: within its room, taking a slot for what comes back."""
    claimed = await store.claim_deliveries(slots.room(), LEASE_SECONDS, ordering_max_wait=3600)
    for record in claimed:
        slots.take(record.seq, record.subscription_id)
    return claimed


async def test_fan_out_stores_pending_deliveries_and_a_claim_leases_them_within_the_room(
    store: SQLiteStore,
) -> None:
    for id in ("a", "b", "c"):
        await subscribe(store, id)
    await subscribe(store, "off", active=False)
    slots = DeliverySlots(total=2, per_subscription=16)

    assert await emit(store, [booking_event("s:b1")]) == 3
    states = sorted(state for state, _ in rows(store).values())
    assert states == ["pending", "pending", "pending"]  # the disabled subscription gets none

    claimed = await claim(store, slots)
    stored = rows(store)
    assert len(claimed) == 2 and len(slots) == 2
    for record in claimed:
        assert record.state == "leased" and record.data["booking"]["notes"] == "update 0"
        assert stored[record.id] == ("leased", record.lease_token)
    # The worker is full: a claim takes nothing until a slot is freed, then the waiting one.
    assert await claim(store, slots) == []
    await deliver(store, claimed[0], slots)
    [third] = await claim(store, slots)
    assert stored[third.id][0] == "pending"
    assert slots.holds(third.seq) and len(slots) == 2


async def test_per_subscription_room_bounds_a_claim(store: SQLiteStore) -> None:
    await subscribe(store, "a")
    await subscribe(store, "b")
    slots = DeliverySlots(total=10, per_subscription=1)

    await emit(store, [booking_event("s:b1"), booking_event("s:b2")])

    first = await claim(store, slots)
    assert sorted(r.order_key for r in first) == ["a|s:b1", "b|s:b1"]
    assert slots.in_flight() == {"a": 1, "b": 1}
    assert await claim(store, slots) == []
    await deliver(store, next(r for r in first if r.subscription_id == "a"), slots)
    [claimed] = await claim(store, slots)
    assert claimed.order_key == "a|s:b2"


async def test_a_tenants_subscriptions_share_its_room(store: SQLiteStore) -> None:
    """Three subscriptions of tenant t share its two slots, however their backlogs fall, and do
    not hold back tenant u's subscription (which has two of its own)."""
    for id in ("t1", "t2", "t3"):
        await subscribe(store, id)
    await subscribe(store, "u1", tenant="u")
    slots = DeliverySlots(total=10, per_subscription=4, per_tenant=2)
    for id in ("t1", "t2", "t3"):
        slots.assign(id, "t")
    slots.assign("u1", "u")

    await emit(store, [booking_event(f"s:b{n}") for n in range(3)])
    first = await claim(store, slots)
    assert sorted(r.subscription_id[0] for r in first) == ["t", "t", "u", "u"]
    assert slots.tenant_in_flight() == {"t": 2, "u": 2}
    assert await claim(store, slots) == []
    await deliver(store, next(r for r in first if r.subscription_id.startswith("t")), slots)
    [again] = await claim(store, slots)
    assert again.subscription_id.startswith("t")
    # A /test send outside the queue counts against the same room.
    assert slots.try_take("t1", "t") is None
    await deliver(store, next(r for r in first if r.subscription_id == "u1"), slots)
    key = slots.try_take("u1", "u")
    assert key is not None and key < 0 and slots.tenant_in_flight()["u"] == 2
    assert await claim(store, slots) == []
    assert slots.release(key) and slots.tenant_in_flight()["u"] == 1
    # A deleted subscription is forgotten; what it still holds is released under its tenant.
    slots.unassign("u1")
    assert "u1" not in slots.room().tenant_of
    held = next(r for r in first if r.subscription_id == "u1" and slots.holds(r.seq))
    assert slots.release(held.seq) and "u" not in slots.tenant_in_flight()


async def test_room_given_by_in_flight_counts_is_honoured(store: SQLiteStore) -> None:
    await subscribe(store, "a")
    await subscribe(store, "b")
    await emit(store, [booking_event(f"s:b{n}") for n in range(3)])

    room = ClaimRoom(total=10, per_subscription=2, in_flight={"a": 2, "b": 1})
    claimed = await store.claim_deliveries(room, LEASE_SECONDS, ordering_max_wait=3600)

    assert [r.subscription_id for r in claimed] == ["b"]
    assert (
        await store.claim_deliveries(
            ClaimRoom(total=0, per_subscription=2), LEASE_SECONDS, ordering_max_wait=3600
        )
        == []
    )


async def test_an_update_waiting_behind_an_unfinished_one_of_its_booking_is_not_claimed(
    store: SQLiteStore,
) -> None:
    await subscribe(store, "a")
    slots = DeliverySlots(total=10, per_subscription=10)

    await emit(store, [booking_event("s:b1", 1)])
    await emit(store, [booking_event("s:b1", 2)])

    [first] = await claim(store, slots)
    assert first.data["booking"]["notes"] == "update 1"
    # The second one goes out only once the first is finished.
    assert await claim(store, slots) == []
    await deliver(store, first, slots)
    [second] = await claim(store, slots)
    assert second.data["booking"]["notes"] == "update 2"


async def test_a_stopping_worker_claims_nothing(store: SQLiteStore) -> None:
    await subscribe(store, "a")
    slots = DeliverySlots(total=10, per_subscription=10)
    slots.close()

    assert await emit(store, [booking_event("s:b1")]) == 1

    assert await claim(store, slots) == [] and len(slots) == 0
    assert [state for state, _ in rows(store).values()] == ["pending"]


async def test_a_rolled_back_fan_out_stores_nothing(store: SQLiteStore) -> None:
    await subscribe(store, "a")
    # An event whose data can't be stored fails the transaction after a delivery was stored.
    broken = booking_event("s:b2")
    broken.data["booking"]["unstorable"] = object()

    with pytest.raises(TypeError):
        await emit(store, [booking_event("s:b1"), broken])

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

    claimed = await claim(store, slots)

    assert sorted(record.subscription_id for record in claimed) == ["fast", "slow", "slow"]
    # Once slow is at its limit, later claims still find fast's next message.
    again = await emit(store, [booking_event("s:fast2")])
    assert again == 2
    [next_one] = await claim(store, slots)
    assert next_one.subscription_id == "fast"


async def test_room_a_subscription_leaves_unused_goes_to_the_others_in_the_same_claim(
    store: SQLiteStore,
) -> None:
    """A claim works out each subscription's share before it reads their backlogs: one with less
    due than its share (here one message; the others wait for a retry) leaves room, which the
    same claim gives to the next subscription of the tenant."""
    await subscribe(store, "a")
    await subscribe(store, "b")
    await emit(store, [booking_event(f"s:b{n}") for n in range(3)])
    everything = ClaimRoom(total=10, per_subscription=10)
    claimed = await store.claim_deliveries(everything, LEASE_SECONDS, ordering_max_wait=3600)
    later = [r for r in claimed if r.subscription_id == "a" and not r.order_key.endswith("b0")]
    retries = [
        Settlement(
            record,
            AttemptRecord(
                delivery_id=record.id,
                subscription_id="a",
                attempt=1,
                attempted_at=time.time(),
                outcome="retry",
                status=500,
            ),
            "pending",
            next_attempt_at=time.time() + 3600,
        )
        for record in later
    ]
    assert await store.settle_deliveries(retries) == [True, True]
    await store.release_deliveries([r for r in claimed if r not in later])

    # a's one due message is as old as b's three, and "a" sorts first: its share (the tenant's
    # three slots) is worked out first, and two of them are left to b.
    room = ClaimRoom(total=10, per_subscription=3, per_tenant=3, tenant_of={"a": "t", "b": "t"})
    again = await store.claim_deliveries(room, LEASE_SECONDS, ordering_max_wait=3600)

    assert sorted(r.subscription_id for r in again) == ["a", "b", "b"]


async def test_a_claim_over_more_subscriptions_than_one_statement_takes_leases_them_all(
    store: SQLiteStore,
) -> None:
    """A claim leases up to ``SHARES_PER_STATEMENT`` subscriptions' shares per statement: more
    subscriptions with room, here more than the 500 terms SQLite allows in one compound SELECT,
    take more statements, and none is passed over."""
    count = 501
    for n in range(count):
        await subscribe(store, f"s{n:03d}")
    assert await emit(store, [booking_event("s:b1")]) == count

    room = ClaimRoom(total=count + 10, per_subscription=1)
    claimed = await store.claim_deliveries(room, LEASE_SECONDS, ordering_max_wait=3600)

    assert sorted(r.subscription_id for r in claimed) == [f"s{n:03d}" for n in range(count)]
    assert {state for state, _ in rows(store).values()} == {"leased"}
