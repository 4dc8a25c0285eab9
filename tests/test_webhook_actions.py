"""Actions on one subscription: POST /test, GET /deliveries, POST /replay, POST /rotate-secret."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from gateway.app import create_app
from gateway.appkeys import deliverer_key, store_key
from gateway.config import GatewayConfig
from gateway.samples import sample_data
from tests.conftest import AUTH_A, AUTH_B
from tests.receivers import (
    FAST_DELIVERY,
    QUIET_INGEST,
    Answer,
    Receiver,
    attempts,
    booking_event,
    emit,
    free_port,
    notes,
    subscribe,
    wait_until_async,
)


@pytest.fixture
async def client(
    aiohttp_client: Any, make_config: Callable[..., GatewayConfig]
) -> TestClient[Any, Any]:
    config = make_config(delivery=FAST_DELIVERY, ingest=QUIET_INGEST)
    found: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return found


async def post_test(client: TestClient[Any, Any], webhook_id: str) -> dict[str, Any]:
    response = await client.post(f"/octo/webhooks/{webhook_id}/test", headers=AUTH_A)
    assert response.status == 200, await response.text()
    found: dict[str, Any] = await response.json()
    return found


# -- POST /test ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [1, 5])
async def test_send_test_returns_status_latency_and_2kb_of_the_answer(
    client: TestClient[Any, Any], receiver: Receiver, chunks: int
) -> None:
    webhook = await subscribe(client, receiver.url())
    answer = ("0123456789" * 500).encode()  # 5 KB
    receiver.default = Answer(200, answer, chunks=chunks)
    result = await post_test(client, webhook["id"])

    assert result["status"] == 200
    assert result["delivered"] is True
    assert result["error"] is None
    assert isinstance(result["latencyMs"], float | int) and result["latencyMs"] >= 0
    assert len(result["response"]) == 2048
    assert result["response"] == answer[:2048].decode()

    [got] = receiver.requests
    assert got.webhook_id == result["messageId"]
    payload = Webhook(webhook["secret"]).verify(got.body, got.headers)
    assert payload["booking"] == sample_data("booking_update")["booking"]
    assert payload["webhook"]["id"] == webhook["id"]
    # A test is sent now and once: nothing is queued, nothing is listed as an attempt.
    assert await client.app[store_key].list_deliveries(webhook["id"]) == []
    assert await attempts(client, webhook["id"]) == []


async def test_send_test_cuts_multibyte_text_cleanly(
    client: TestClient[Any, Any], receiver: Receiver
) -> None:
    webhook = await subscribe(client, receiver.url())
    receiver.default = Answer(200, ("x" + "é" * 3000).encode())  # 2 bytes each
    result = await post_test(client, webhook["id"])
    # 2048 bytes end in the middle of an "é": the half character is dropped, not garbled.
    assert result["response"] == "x" + "é" * 1023


async def test_send_test_of_availability(client: TestClient[Any, Any], receiver: Receiver) -> None:
    webhook = await subscribe(client, receiver.url(), event="availability_update")
    result = await post_test(client, webhook["id"])
    assert result["delivered"] is True
    [got] = receiver.requests
    body = got.json()
    assert set(body) == {"webhook", "availability", "productId", "optionId", "supplier"}
    assert body["availability"] == sample_data("availability_update")["availability"]


async def test_send_test_reports_failures(client: TestClient[Any, Any], receiver: Receiver) -> None:
    webhook = await subscribe(client, receiver.url())
    receiver.default = Answer(503, b"down for maintenance")
    result = await post_test(client, webhook["id"])
    assert (result["status"], result["delivered"]) == (503, False)
    assert result["response"] == "down for maintenance"
    assert len(receiver.requests) == 1  # not retried

    refused = await subscribe(client, f"http://127.0.0.1:{free_port()}/hook")
    result = await post_test(client, refused["id"])
    assert result["status"] is None
    assert result["delivered"] is False
    assert result["response"] is None
    assert "connect" in result["error"].lower()


async def test_send_test_to_a_subscriber_that_never_answers_times_out(
    client: TestClient[Any, Any], receiver: Receiver
) -> None:
    """The attempt's deadline (one sweeping timer, gateway/delivery/deadlines.py) cancels the
    request handler's own task: the handler still answers, with the attempt timed out."""
    webhook = await subscribe(client, receiver.url())
    receiver.default = Answer(hang=True)
    try:
        result = await post_test(client, webhook["id"])
    finally:
        receiver.release()
    assert (result["status"], result["delivered"]) == (None, False)
    assert result["error"] == "timed out"
    assert len(receiver.requests) == 1


async def test_send_test_is_tenant_scoped(client: TestClient[Any, Any], receiver: Receiver) -> None:
    webhook = await subscribe(client, receiver.url())
    response = await client.post(f"/octo/webhooks/{webhook['id']}/test", headers=AUTH_B)
    assert response.status == 404
    assert receiver.requests == []


# -- GET /deliveries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "?state=bogus",
        "?limit=0",
        "?limit=501",
        "?limit=abc",
        "?limit=-1",
        "?before=0",
        "?limit=²",
        "?before=9223372036854775808",  # one past SQLite's integers
        "?limit=" + "1" * 5000,  # int() refuses over 4300 digits
        "?before=" + "9" * 5000,
    ],
    ids=lambda query: query[:40],
)
async def test_deliveries_query_is_validated(
    client: TestClient[Any, Any], receiver: Receiver, query: str
) -> None:
    webhook = await subscribe(client, receiver.url())
    response = await client.get(f"/octo/webhooks/{webhook['id']}/deliveries{query}", headers=AUTH_A)
    assert response.status == 400
    assert (await response.json())["error"] == "BAD_REQUEST"


async def test_deliveries_are_tenant_scoped(
    client: TestClient[Any, Any], receiver: Receiver
) -> None:
    webhook = await subscribe(client, receiver.url())
    response = await client.get(f"/octo/webhooks/{webhook['id']}/deliveries", headers=AUTH_B)
    assert response.status == 404
    assert await attempts(client, webhook["id"]) == []


# -- POST /replay ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"},  # no time zone
        {"since": "2026-01-01T00:00:00Z", "extra": 1},
        [],
    ],
)
async def test_replay_body_is_validated(
    client: TestClient[Any, Any], receiver: Receiver, body: Any
) -> None:
    webhook = await subscribe(client, receiver.url())
    response = await client.post(
        f"/octo/webhooks/{webhook['id']}/replay", json=body, headers=AUTH_A
    )
    assert response.status == 400
    assert (await response.json())["error"] == "BAD_REQUEST"


async def test_replay_resends_only_messages_since_then(
    client: TestClient[Any, Any], receiver: Receiver
) -> None:
    webhook = await subscribe(client, receiver.url())
    store = client.app[store_key]

    async def delivered(count: int) -> None:
        async def enough() -> bool:
            return len(await store.list_deliveries(webhook["id"], state="delivered")) >= count

        await wait_until_async(enough, f"{count} delivered")

    await emit(store, [booking_event("test:a", 1)])
    client.app[deliverer_key].wake()
    await delivered(1)
    since = datetime.now(UTC)
    time.sleep(0.01)
    await emit(store, [booking_event("test:b", 2)])
    client.app[deliverer_key].wake()
    await delivered(2)
    assert [notes(r) for r in receiver.requests] == ["update 1", "update 2"]

    response = await client.post(
        f"/octo/webhooks/{webhook['id']}/replay",
        json={"since": since.isoformat().replace("+00:00", "Z")},
        headers=AUTH_A,
    )
    assert await response.json() == {"replayed": 1}
    requests = await receiver.wait_for(3)
    assert notes(requests[2]) == "update 2"
    assert requests[2].webhook_id == requests[1].webhook_id
    await delivered(2)

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = await client.post(
        f"/octo/webhooks/{webhook['id']}/replay", json={"since": future}, headers=AUTH_A
    )
    assert await response.json() == {"replayed": 0}
    other = await client.post(
        f"/octo/webhooks/{webhook['id']}/replay", json={"since": future}, headers=AUTH_B
    )
    assert other.status == 404


# -- POST /rotate-secret ---------------------------------------------------------------------


async def test_rotate_secret(client: TestClient[Any, Any], receiver: Receiver) -> None:
    webhook = await subscribe(client, receiver.url())
    response = await client.post(f"/octo/webhooks/{webhook['id']}/rotate-secret", headers=AUTH_A)
    assert response.status == 200
    first = await response.json()
    assert first["id"] == webhook["id"]
    assert first["secret"] != webhook["secret"]
    expires = datetime.fromisoformat(first["previousSecretExpiresAt"].replace("Z", "+00:00"))
    assert abs((expires - datetime.now(UTC)) - timedelta(hours=24)) < timedelta(minutes=1)

    again = await (
        await client.post(f"/octo/webhooks/{webhook['id']}/rotate-secret", headers=AUTH_A)
    ).json()
    await post_test(client, webhook["id"])
    [got] = receiver.requests
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(again["secret"]).verify(got.body, got.headers)
    Webhook(first["secret"]).verify(got.body, got.headers)
    with pytest.raises(Exception):  # noqa: B017 - the oldest secret is gone after two rotations
        Webhook(webhook["secret"]).verify(got.body, got.headers)

    other = await client.post(f"/octo/webhooks/{webhook['id']}/rotate-secret", headers=AUTH_B)
    assert other.status == 404
