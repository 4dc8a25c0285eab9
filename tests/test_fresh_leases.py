"""Fresh messages leased at fan-out: the delivery worker lends its room (``HandOver``) to a push's
fan-out, which stores the messages that fit already leased to it, with their event data, so they
start without a claim. Everything a claim respects must hold for them: the room (total, per
subscription, per tenant), older messages due first, order per booking, and lease fencing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import deliverer_key
from gateway.config import GatewayConfig
from gateway.delivery.worker import SubscriptionCache
from gateway.models import DeliveryRecord, NewEvent, Subscription
from gateway.sources import IncomingPush
from gateway.store import SQLiteStore
from gateway.store.interface import ClaimRoom, HandOver, Store
from gateway.web.ingest import intake_key, sources_key
from tests.fake_pms import eventually
from tests.octo_schema import load_fixture
from tests.receivers import (
    FAST_DELIVERY,
    QUIET_INGEST,
    WAIT,
    Receiver,
    booking_event,
    emit,
    subscribe,
)
from tests.test_delivery import metric
from tests.test_delivery_claims import rows
from tests.test_delivery_claims import subscribe as subscribe_in
from tests.test_store_shared import delivered

EVERYTHING = ClaimRoom(total=100, per_subscription=100)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "fresh.db")
    await store.open()
    yield store
    await store.close()


async def emit_handed(store: Store, events: list[NewEvent], hand_over: HandOver) -> int:
    """``emit``, with the worker's room lent to the fan-out."""
    push, _ = await store.insert_push(
        source="test", kind="events", payload={}, dedupe_key=None, order_key=None, lease_seconds=60
    )
    assert push.lease_token is not None
    created = await store.complete_push(push.id, push.lease_token, events, hand_over=hand_over)
    assert created is not None
    return created


async def test_a_fan_out_leases_what_fits_the_room_and_stores_the_rest_pending(
    store: SQLiteStore,
) -> None:
    for id in ("a", "b", "c"):
        await subscribe_in(store, id, tenant="t")
    await subscribe_in(store, "d", tenant="u")
    room = ClaimRoom(
        total=3,
        per_subscription=1,
        per_tenant=2,
        tenant_of={"a": "t", "b": "t", "c": "t", "d": "u"},
    )
    hand_over = HandOver(room, lease_seconds=60)

    assert await emit_handed(store, [booking_event("s:b1"), booking_event("s:b2")], hand_over) == 8

    # One per subscription, two for tenant t (a and b, the first it met), three in all.
    leased = hand_over.leased
    assert sorted((r.subscription_id, r.order_key) for r in leased) == [
        ("a", "a|s:b1"),
        ("b", "b|s:b1"),
        ("d", "d|s:b1"),
    ]
    stored = rows(store)
    for record in leased:
        assert stored[record.id] == ("leased", record.lease_token)
        # What a claim would have given: the stored row with its event's data.
        read = await store.get_delivery(record.subscription_id, record.id)
        assert read is not None and read.model_dump() == record.model_dump()
        assert record.data["booking"]["notes"] == "update 0"
    # The rest wait, pending, for the worker's claim, which does not take the leased ones again.
    claimed = await store.claim_deliveries(EVERYTHING, 60, ordering_max_wait=3600)
    assert {r.id for r in claimed} == {id for id in stored if id not in {r.id for r in leased}}
    assert len(claimed) == 5


async def test_a_message_behind_an_unfinished_one_of_its_booking_is_not_leased(
    store: SQLiteStore,
) -> None:
    await subscribe_in(store, "a")
    await emit(store, [booking_event("s:b1", 0)])
    [sending] = await store.claim_deliveries(EVERYTHING, 60, ordering_max_wait=3600)

    hand_over = HandOver(EVERYTHING, lease_seconds=60)
    events = [booking_event("s:b1", 1), booking_event("s:b2", 0), booking_event("s:b2", 1)]
    assert await emit_handed(store, events, hand_over) == 3

    # b1's update waits for update 0, still being sent; of b2's two updates in one push only the
    # first goes now.
    [leased] = hand_over.leased
    assert leased.order_key == "a|s:b2" and leased.data["booking"]["notes"] == "update 0"
    assert await store.claim_deliveries(EVERYTHING, 60, ordering_max_wait=3600) == []
    # Each second update goes once its first is finished.
    assert await store.settle_deliveries([delivered(sending), delivered(leased)]) == [True, True]
    claimed = await store.claim_deliveries(EVERYTHING, 60, ordering_max_wait=3600)
    assert sorted((r.order_key, r.data["booking"]["notes"]) for r in claimed) == [
        ("a|s:b1", "update 1"),
        ("a|s:b2", "update 1"),
    ]


async def test_a_subscription_with_older_messages_due_gets_no_fresh_lease(
    store: SQLiteStore,
) -> None:
    await subscribe_in(store, "a")
    await emit(store, [booking_event("s:old")])  # due for a, waiting for a claim
    await subscribe_in(store, "b")

    hand_over = HandOver(EVERYTHING, lease_seconds=60)
    assert await emit_handed(store, [booking_event("s:new")], hand_over) == 2

    # a's older message goes first (by the claim, oldest due first); b had nothing waiting.
    assert [(r.subscription_id, r.order_key) for r in hand_over.leased] == [("b", "b|s:new")]
    claimed = await store.claim_deliveries(ClaimRoom(1, 1), 60, ordering_max_wait=3600)
    assert [r.order_key for r in claimed] == ["a|s:old"]


async def test_a_fresh_lease_that_runs_out_is_claimed_again_and_the_first_settle_is_fenced(
    store: SQLiteStore,
) -> None:
    """A worker killed right after the fan-out: its leases run out and the messages are sent
    again with the same webhook-id; the dead worker's settle changes nothing."""
    await subscribe_in(store, "a")
    hand_over = HandOver(EVERYTHING, lease_seconds=-1)  # already run out
    await emit_handed(store, [booking_event("s:b1")], hand_over)
    [first] = hand_over.leased

    [again] = await store.claim_deliveries(EVERYTHING, 60, ordering_max_wait=3600)
    assert again.id == first.id and again.lease_token != first.lease_token
    assert await store.settle_deliveries([delivered(first)]) == [False]
    assert rows(store)[first.id] == ("leased", again.lease_token)
    assert await store.settle_deliveries([delivered(again)]) == [True]
    assert rows(store)[first.id] == ("delivered", None)


async def test_a_failed_fan_out_leases_nothing(store: SQLiteStore) -> None:
    await subscribe_in(store, "a")
    push, _ = await store.insert_push(
        source="test", kind="events", payload={}, dedupe_key=None, order_key=None, lease_seconds=60
    )
    hand_over = HandOver(EVERYTHING, lease_seconds=60)
    # Another lease token: the push is not ours, nothing is stored and nothing leased.
    assert (
        await store.complete_push(push.id, "lease_other", [booking_event()], hand_over=hand_over)
        is None
    )
    assert hand_over.leased == [] and rows(store) == {}


class CountingStore(SQLiteStore):
    """The real store, counting its subscription reads and delivery claims."""

    reads = 0
    claims = 0

    async def get_subscription(self, tenant: str | None, id: str) -> Subscription | None:
        self.reads += 1
        return await super().get_subscription(tenant, id)

    async def claim_deliveries(
        self, room: ClaimRoom, lease_seconds: float, *, ordering_max_wait: float
    ) -> list[DeliveryRecord]:
        claimed = await super().claim_deliveries(
            room, lease_seconds, ordering_max_wait=ordering_max_wait
        )
        self.claims += 1  # counted once done
        return claimed


async def idle_gateway(
    aiohttp_client: Any, config: GatewayConfig, tmp_path: Path
) -> tuple[TestClient[Any, Any], CountingStore]:
    """A gateway whose delivery worker made its first claim and sleeps until woken (the config's
    poll interval must be long): a fan-out may borrow its room, which a claim in progress holds."""
    store = CountingStore(tmp_path / "counted.db")
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config, store=store))
    await eventually(lambda: store.claims >= 1, timeout=WAIT)
    return client, store


# -- the worker: lending its room, and sending what was leased -------------------------------


async def test_the_worker_sends_what_a_fan_out_leased_in_the_room_it_lent(
    aiohttp_client: Any,
    fast_config: Callable[..., GatewayConfig],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    config = fast_config(per_subscriber_concurrency=1, poll_interval=3600)
    client, store = await idle_gateway(aiohttp_client, config, tmp_path)
    deliverer = client.app[deliverer_key]
    webhook = await subscribe(client, receiver.url())

    hand_over = deliverer.lend()
    assert hand_over is not None
    assert hand_over.room.per_subscription == 1
    assert deliverer.lend() is None  # one lender at a time: the room is lent whole
    events = [booking_event("s:b1"), booking_event("s:b2")]
    assert await emit_handed(store, events, hand_over) == 2
    [leased] = hand_over.leased  # one slot per subscription
    deliverer.adopt(hand_over)
    deliverer.wake()  # as the processor does when some are left pending

    got = await receiver.wait_for(2)
    assert got[0].webhook_id == leased.id  # the leased one went first, without a claim
    assert {r.webhook_id for r in got} == {r.id for r in await store.list_deliveries(webhook["id"])}
    assert deliverer.lend() is not None  # the room is the worker's again
    # /metrics tells the two ways apart: sent as stored, or queued for a claim.
    text = await (await client.get("/metrics")).text()
    assert metric(text, 'gateway_deliveries_leased_total{by="fan-out"}') == 1.0
    assert metric(text, 'gateway_deliveries_leased_total{by="claim"}') == 1.0


async def test_a_push_processed_at_ingest_leases_its_fresh_messages_too(
    store: SQLiteStore,
) -> None:
    for id in ("a", "b"):
        await subscribe_in(store, id)
    hand_over = HandOver(ClaimRoom(total=1, per_subscription=1), lease_seconds=60)

    record, created, deliveries = await store.insert_processed_push(
        id="psh_inline",
        source="test",
        kind="events",
        payload={},
        dedupe_key=None,
        order_key=None,
        events=[booking_event("s:b1")],
        hand_over=hand_over,
    )

    assert (record.state, created, deliveries) == ("processed", True, 2)
    [leased] = hand_over.leased
    assert rows(store)[leased.id] == ("leased", leased.lease_token)
    [other] = await store.claim_deliveries(EVERYTHING, 60, ordering_max_wait=3600)
    assert other.id != leased.id and other.order_key.endswith("|s:b1")


async def test_a_self_contained_push_is_sent_from_the_room_its_ingest_lent(
    aiohttp_client: Any,
    make_config: Callable[..., GatewayConfig],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """Translated in its ingest request, the push's fan-out leases its messages in the worker's
    room; ``stored`` gives the room back and the worker sends them."""
    # An ARI push needs no PMS call: the API settings are never used.
    channex = {"token": "t", "api_url": "http://127.0.0.1:9/api", "api_key": "k"}
    delivery = {**FAST_DELIVERY, "poll_interval": 3600}
    config = make_config(delivery=delivery, ingest=QUIET_INGEST, sources={"channex": channex})
    client, store = await idle_gateway(aiohttp_client, config, tmp_path)
    intake = client.app[intake_key]
    await subscribe(client, receiver.url(), "availability_update")
    ari = load_fixture("channex-ari-1.json")
    accepted = client.app[sources_key]["channex"].accept(
        IncomingPush("channex", "POST", {}, {}, json.dumps(ari).encode())
    )
    assert accepted.self_contained

    translated = await intake.translate("channex", accepted)
    assert translated is not None and translated.hand_over is not None
    write = asyncio.ensure_future(
        store.insert_processed_push(
            id=translated.id,
            source="channex",
            kind=accepted.kind,
            payload=accepted.payload,
            dedupe_key=None,
            order_key=accepted.order_key,
            events=translated.events,
            hand_over=translated.hand_over,
        )
    )
    write.add_done_callback(partial(intake.stored, translated))
    _, _, deliveries = await write

    leased = translated.hand_over.leased
    assert deliveries >= 1 and len(leased) == deliveries  # room for all of them
    got = await receiver.wait_for(deliveries)
    assert {r.webhook_id for r in got} == {r.id for r in leased}
    assert client.app[deliverer_key].lend() is not None  # the room was given back


# -- the subscriptions the worker delivers to ------------------------------------------------


async def test_messages_leased_at_fan_out_finish_without_a_claim_after_them(
    aiohttp_client: Any,
    fast_config: Callable[..., GatewayConfig],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """Nothing waits behind them, and the worker knows it from the next due time it read: a
    claim after each finished message would be a write transaction finding nothing."""
    client, store = await idle_gateway(aiohttp_client, fast_config(poll_interval=3600), tmp_path)
    deliverer = client.app[deliverer_key]
    webhook = await subscribe(client, receiver.url())
    claims = store.claims

    hand_over = deliverer.lend()
    assert hand_over is not None
    events = [booking_event(f"s:b{i}") for i in range(4)]
    assert await emit_handed(store, events, hand_over) == 4
    assert len(hand_over.leased) == 4
    deliverer.adopt(hand_over)

    await receiver.wait_for(4)

    async def settled() -> bool:
        return len(await store.list_deliveries(webhook["id"], state="delivered")) == 4

    await eventually(settled, timeout=WAIT)
    assert store.claims == claims
    # New messages stored pending still wake it to claim them at once.
    assert await emit(store, [booking_event("s:later")]) == 1
    deliverer.wake()
    await receiver.wait_for(5)


async def test_messages_in_flight_to_one_subscription_share_one_read_of_it(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path / "cache.db")
    await store.open()
    try:
        await subscribe_in(store, "a")
        cache = SubscriptionCache(store, ttl=3600)

        found = await asyncio.gather(*(cache.get("a") for _ in range(16)))

        assert store.reads == 1
        assert {s.id for s in found if s is not None} == {"a"} and None not in found
        await cache.get("a")
        assert store.reads == 1  # kept
        # A change made here is read afresh, even when it lands while a read is under way.
        cache.forget("a")
        reading = asyncio.ensure_future(cache.get("a"))
        await asyncio.sleep(0)  # the read is under way
        cache.forget("a")
        await reading
        await cache.get("a")
        assert store.reads == 3
    finally:
        await store.close()


class BrokenReadStore(CountingStore):
    """The real store, whose next ``broken`` subscription reads fail with a bug (not a storage
    fault, which the worker handles as such)."""

    broken = 0

    async def get_subscription(self, tenant: str | None, id: str) -> Subscription | None:
        if self.broken:
            self.broken -= 1
            raise RuntimeError("a bug reading the subscription")
        return await super().get_subscription(tenant, id)


async def test_a_delivery_that_crashes_is_logged_and_gives_its_slot_back(
    aiohttp_client: Any,
    fast_config: Callable[..., GatewayConfig],
    receiver: Receiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in one delivery ends that delivery only: logged, its slot and its place among the
    messages in flight freed (the message stays leased until its lease runs out)."""
    store = BrokenReadStore(tmp_path / "broken.db")
    client = await aiohttp_client(create_app(fast_config(poll_interval=3600), store=store))
    await eventually(lambda: store.claims >= 1, timeout=WAIT)
    deliverer = client.app[deliverer_key]
    await subscribe(client, receiver.url())
    store.broken = 1

    hand_over = deliverer.lend()
    assert hand_over is not None
    assert await emit_handed(store, [booking_event("s:b1")], hand_over) == 1
    [leased] = hand_over.leased
    deliverer.adopt(hand_over)

    await eventually(lambda: f"delivery task for {leased.id} crashed" in caplog.text, timeout=WAIT)
    await eventually(lambda: not deliverer._running and len(deliverer.slots) == 0, timeout=WAIT)
    assert rows(store)[leased.id][0] == "leased"
