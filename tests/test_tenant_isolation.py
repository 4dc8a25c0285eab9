"""One tenant's slow subscribers must not delay or fail another tenant's deliveries (issue 12,
finding 2): per-tenant delivery limits, /test sends take a delivery slot, and a wait for a pooled
connection is never charged to the connect timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway.app import create_app
from gateway.appkeys import store_key
from gateway.config import GatewayConfig
from gateway.delivery.worker import make_client
from tests.receivers import (
    FAST_DELIVERY,
    QUIET_INGEST,
    Answer,
    Receiver,
    attempts,
    booking_event,
    emit,
    subscribe,
    wait_until,
    wait_until_async,
)
from tests.tenants import ADMIN, AUTH_A, TENANT_A

TENANT_C = {"name": "reseller-c", "key": "key-c-0123456789", "products": ["*"]}
AUTH_C = {"Authorization": f"Bearer {TENANT_C['key']}"}
# Four slots in all, two per tenant; a hung receiver holds its requests for the whole test.
LIMITS = {"concurrency": 4, "per_subscriber_concurrency": 4, "per_tenant_concurrency": 2}


async def first_attempts(client: TestClient[Any, Any], webhook_id: str) -> list[tuple[int, str]]:
    """Tenant C's attempts once the first one is recorded (it is, just after the answer)."""
    listed: list[dict[str, Any]] = []

    async def recorded() -> bool:
        listed[:] = await attempts(client, webhook_id, auth=AUTH_C)
        return bool(listed)

    await wait_until_async(recorded, "the first attempt recorded")
    return [(a["attempt"], a["outcome"]) for a in listed]


@pytest.fixture
async def client(
    aiohttp_client: Any, make_config: Callable[..., GatewayConfig]
) -> TestClient[Any, Any]:
    config = make_config(
        delivery={**FAST_DELIVERY, **LIMITS, "timeout": 30},
        ingest=QUIET_INGEST,
        api_keys=[TENANT_A, TENANT_C, ADMIN],
    )
    found: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return found


async def test_a_tenants_hung_subscribers_leave_room_for_others(
    client: TestClient[Any, Any], receiver: Receiver, other_receiver: Receiver
) -> None:
    receiver.default = Answer(hang=True)
    store = client.app[store_key]
    for _ in range(2):
        await subscribe(client, receiver.url("/slow"))
    # Three bookings for tenant A's two subscriptions: six deliveries that will all hang.
    await emit(store, [booking_event(f"test:slow-{n}") for n in range(3)])
    await receiver.wait_for(2)
    healthy = await subscribe(client, other_receiver.url("/fast"), auth=AUTH_C)
    await emit(store, [booking_event("test:fast")])
    await other_receiver.wait_for(1)
    assert len(receiver.requests) == 2  # tenant A holds no more than its two slots
    assert await first_attempts(client, healthy["id"]) == [(1, "delivered")]


async def test_a_burst_of_tests_to_a_hung_receiver_does_not_fail_other_tenants(
    client: TestClient[Any, Any], receiver: Receiver, other_receiver: Receiver
) -> None:
    receiver.default = Answer(hang=True)
    slow = await subscribe(client, receiver.url("/slow"))
    healthy = await subscribe(client, other_receiver.url("/fast"), auth=AUTH_C)
    burst = [
        asyncio.create_task(client.post(f"/octo/webhooks/{slow['id']}/test", headers=AUTH_A))
        for _ in range(10)
    ]
    await wait_until(lambda: sum(task.done() for task in burst) >= 8, "eight /test answers")
    refused = [task.result() for task in burst if task.done()]
    assert [r.status for r in refused] == [429] * 8  # two in flight: the tenant's limit
    body = await refused[0].json()
    assert body["error"] == "TOO_MANY_REQUESTS" and refused[0].headers["Retry-After"] == "1"
    await receiver.wait_for(2)

    await emit(client.app[store_key], [booking_event("test:fast")])
    await other_receiver.wait_for(1)
    assert await first_attempts(client, healthy["id"]) == [(1, "delivered")]
    receiver.release()
    answers = [await task for task in burst]
    assert sorted(r.status for r in answers) == [200, 200] + [429] * 8


async def test_a_busy_connection_never_holds_up_another_subscriber(
    make_config: Callable[..., GatewayConfig], receiver: Receiver, other_receiver: Receiver
) -> None:
    """With every kept connection busy (concurrency 1, one attempt hanging), the next attempt
    opens its own at once: no wait for a pooled one, so nothing counts against another tenant's
    connect_timeout (the delivery slots are what bound attempts in flight)."""
    config = make_config(delivery={**FAST_DELIVERY, "concurrency": 1, "connect_timeout": 0.2})
    receiver.default = Answer(hang=True)
    client = make_client(config.delivery)
    deadline = asyncio.get_running_loop().time() + 10
    try:
        hung = asyncio.create_task(
            client.post(URL(receiver.url("/slow")), [], b"{}", limit=10, deadline=deadline)
        )
        await receiver.wait_for(1)
        second = await asyncio.wait_for(
            client.post(URL(other_receiver.url("/fast")), [], b"{}", limit=10, deadline=deadline),
            timeout=2,
        )
        assert second.status == 200
        assert not hung.done()
        receiver.release()
        assert (await hung).status == 200
    finally:
        await client.close()
    await wait_until(lambda: len(other_receiver.requests) == 1, "the second request")
