"""The delivery engine end to end: the gateway on loopback, real SQLite in tmp_path, receivers that
record what they got and answer 200, 500, 410, 429, 302 or hang."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from gateway.app import create_app
from gateway.appkeys import deliverer_key, store_key
from gateway.config import GatewayConfig
from gateway.hookspecs import hookimpl
from gateway.models import DeliveryRecord
from gateway.plugins import make_plugin_manager
from gateway.store import SQLiteStore
from gateway.store.interface import Retention, Store
from tests.conftest import AUTH_A, REPO
from tests.receivers import (
    Answer,
    Received,
    Receiver,
    attempts,
    availability_event,
    booking_event,
    emit,
    free_port,
    notes,
    subscribe,
    wait_attempts,
    wait_until_async,
)

# Both stores: the SQLite file and a PostgreSQL database.
pytestmark = pytest.mark.both_stores


Start = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def start(aiohttp_client: Any, fast_config: Callable[..., GatewayConfig]) -> Start:
    """Start a gateway (with its workers) on loopback; keyword arguments tune [delivery]."""

    async def start_(config: GatewayConfig | None = None, **delivery: Any) -> TestClient[Any, Any]:
        app = create_app(config if config is not None else fast_config(**delivery))
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return start_


def store_of(client: TestClient[Any, Any]) -> Store:
    store: Store = client.app[store_key]
    return store


async def send(client: TestClient[Any, Any], *events: Any) -> int:
    created = await emit(store_of(client), list(events))
    client.app[deliverer_key].wake()
    return created


async def get_webhook(client: TestClient[Any, Any], webhook_id: str) -> dict[str, Any]:
    response = await client.get(f"/octo/webhooks/{webhook_id}", headers=AUTH_A)
    assert response.status == 200
    found: dict[str, Any] = await response.json()
    return found


async def wait_state(
    client: TestClient[Any, Any], webhook_id: str, state: str, count: int = 1
) -> None:
    store = store_of(client)

    async def reached() -> bool:
        return len(await store.list_deliveries(webhook_id, state=state)) >= count

    await wait_until_async(reached, f"{count} deliveries {state}")


# -- outcomes --------------------------------------------------------------------------------


async def test_a_subscribers_cookies_are_never_sent_back(start: Start, receiver: Receiver) -> None:
    """The delivery session keeps no cookies: a Set-Cookie from one answer is not replayed."""
    client = await start()
    url = receiver.url().replace("127.0.0.1", "localhost")  # a name: a jar would keep its cookies
    await subscribe(client, url)
    receiver.default = Answer(200, headers={"Set-Cookie": "session=s3cret; Path=/"})
    await send(client, booking_event(n=0))
    await receiver.wait_for(1)
    await send(client, booking_event(n=1))
    first, second = await receiver.wait_for(2)
    assert "cookie" not in first.headers and "cookie" not in second.headers


async def test_success(start: Start, receiver: Receiver) -> None:
    client = await start()
    webhook = await subscribe(client, receiver.url())
    assert await send(client, booking_event()) == 1

    [got] = await receiver.wait_for(1)
    assert got.method == "POST"
    assert got.path == "/hook"
    assert got.headers["content-type"] == "application/json"
    body = got.json()
    assert set(body) == {"webhook", "booking", "diff", "supplier"}
    assert body["webhook"]["id"] == webhook["id"]
    assert "secret" not in body["webhook"]
    assert body["booking"]["notes"] == "update 0"
    assert body["diff"] == []
    assert got.webhook_id.startswith("msg_")

    [attempt] = await wait_attempts(client, webhook["id"], 1)
    assert attempt["messageId"] == got.webhook_id
    assert attempt["attempt"] == 1
    assert attempt["outcome"] == "delivered"
    assert attempt["status"] == 200
    assert attempt["state"] == "delivered"
    assert attempt["response"] == '{"ok": true}'
    assert isinstance(attempt["latencyMs"], float | int)
    assert len(receiver.requests) == 1


async def test_500_then_200_is_retried_with_the_same_webhook_id(
    start: Start, receiver: Receiver
) -> None:
    client = await start()
    webhook = await subscribe(client, receiver.url())
    receiver.script = [Answer(500, b"boom")]
    await send(client, booking_event())

    first, second = await receiver.wait_for(2)
    assert first.webhook_id == second.webhook_id
    assert first.body == second.body  # the same message, byte for byte
    await wait_state(client, webhook["id"], "delivered")

    listed = await attempts(client, webhook["id"])
    assert [(a["attempt"], a["outcome"], a["status"]) for a in listed] == [
        (2, "delivered", 200),  # newest first
        (1, "retry", 500),
    ]
    assert listed[1]["response"] == "boom"
    assert {a["messageId"] for a in listed} == {first.webhook_id}
    assert {a["state"] for a in listed} == {"delivered"}
    assert len(receiver.requests) == 2


async def test_deliveries_listing_filters_by_state_and_pages(
    start: Start, receiver: Receiver
) -> None:
    client = await start()
    webhook = await subscribe(client, receiver.url(), retryOnError=False)

    def decide(request: Received, index: int) -> Answer:
        if notes(request) == "update 1":
            return Answer(400, b"no")  # not retried: retryOnError is false
        return Answer(500) if index == 0 else Answer(200)

    receiver.decide = decide
    await send(client, booking_event("test:a", 0))
    await wait_state(client, webhook["id"], "delivered")
    await send(client, booking_event("test:b", 1))
    await wait_state(client, webhook["id"], "dead")

    everything = await attempts(client, webhook["id"])
    assert [(a["outcome"], a["status"]) for a in everything] == [
        ("dead", 400),
        ("delivered", 200),
        ("retry", 500),
    ]
    dead = await attempts(client, webhook["id"], "?state=dead")
    assert [(a["outcome"], a["state"]) for a in dead] == [("dead", "dead")]
    delivered = await attempts(client, webhook["id"], "?state=delivered")
    assert [a["attempt"] for a in delivered] == [2, 1]
    assert await attempts(client, webhook["id"], "?state=pending") == []

    page = await client.get(f"/octo/webhooks/{webhook['id']}/deliveries?limit=2", headers=AUTH_A)
    assert page.status == 200
    assert [a["status"] for a in await page.json()] == [400, 200]
    link = page.headers["Link"]
    assert link.endswith('>; rel="next"')
    next_url = link[1 : link.index(">")]
    second = await client.get(next_url, headers=AUTH_A)
    assert [a["status"] for a in await second.json()] == [500]
    assert "Link" not in second.headers

    one = await client.get(
        f"/octo/webhooks/{webhook['id']}/deliveries?state=delivered&limit=1", headers=AUTH_A
    )
    assert [a["attempt"] for a in await one.json()] == [2]
    link = one.headers["Link"]
    rest = await client.get(link[1 : link.index(">")], headers=AUTH_A)
    assert [a["attempt"] for a in await rest.json()] == [1]


async def test_a_hang_past_the_timeout_is_retried(start: Start, receiver: Receiver) -> None:
    client = await start(timeout=0.5)
    webhook = await subscribe(client, receiver.url())
    receiver.script = [Answer(hang=True)]
    await send(client, booking_event())

    first, second = await receiver.wait_for(2)
    assert first.webhook_id == second.webhook_id
    await wait_state(client, webhook["id"], "delivered")
    retry, done = reversed(await attempts(client, webhook["id"]))
    assert (retry["outcome"], retry["status"], retry["error"]) == ("retry", None, "timed out")
    assert retry["latencyMs"] >= 400
    assert (done["outcome"], done["status"]) == ("delivered", 200)


async def test_connection_refused_is_retried_until_the_receiver_is_up(
    start: Start, aiohttp_server: Any
) -> None:
    port = free_port()
    client = await start(retry_schedule=[0.05, 0.2, 0.5, 1, 1, 1, 1])
    webhook = await subscribe(client, f"http://127.0.0.1:{port}/hook")
    await send(client, booking_event())

    [refused] = (await wait_attempts(client, webhook["id"], 1))[-1:]
    assert refused["outcome"] == "retry"
    assert refused["status"] is None
    assert "connect" in refused["error"].lower()

    late = Receiver()
    await late.start(aiohttp_server, port=port)
    [got] = await late.wait_for(1)
    await wait_state(client, webhook["id"], "delivered")
    listed = await attempts(client, webhook["id"])
    assert listed[0]["outcome"] == "delivered"
    assert {a["messageId"] for a in listed} == {got.webhook_id}
    assert all(a["outcome"] == "retry" and a["status"] is None for a in listed[1:])


async def test_410_disables_and_replay_sends_what_it_missed(
    start: Start, receiver: Receiver
) -> None:
    client = await start()
    webhook = await subscribe(client, receiver.url())
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    receiver.script = [Answer(410, b"gone")]
    await send(client, booking_event("test:b", 0))
    [gone] = await receiver.wait_for(1)

    async def disabled() -> bool:
        return (await get_webhook(client, webhook["id"]))["active"] is False

    await wait_until_async(disabled, "the subscription to be disabled")
    assert "410" in (await get_webhook(client, webhook["id"]))["disabledReason"]
    [attempt] = await attempts(client, webhook["id"])
    assert (attempt["outcome"], attempt["status"], attempt["state"]) == ("disabled", 410, "dead")

    # Disabled: the next updates make no rows for it (issue 12: they used to pile up as skipped).
    assert await send(client, booking_event("test:b", 1), booking_event("test:b", 2)) == 0
    assert len(await store_of(client).list_deliveries(webhook["id"])) == 1
    refused = await client.post(
        f"/octo/webhooks/{webhook['id']}/replay", json={"since": since}, headers=AUTH_A
    )
    assert refused.status == 400  # disabled: turn it back on first
    assert len(receiver.requests) == 1

    patched = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"active": True}, headers=AUTH_A
    )
    assert (await patched.json())["active"] is True
    replayed = await client.post(
        f"/octo/webhooks/{webhook['id']}/replay", json={"since": since}, headers=AUTH_A
    )
    assert replayed.status == 200
    assert await replayed.json() == {"replayed": 3}

    requests = await receiver.wait_for(4)
    again = requests[1:]
    assert [notes(r) for r in again] == ["update 0", "update 1", "update 2"]  # in order
    assert again[0].webhook_id == gone.webhook_id
    assert len({r.webhook_id for r in again}) == 3
    await wait_state(client, webhook["id"], "delivered", 3)


async def test_retry_after_is_honoured_within_the_policy(start: Start, receiver: Receiver) -> None:
    client = await start(retry_schedule=[0.5, 0.5])
    await subscribe(client, receiver.url())
    receiver.script = [Answer(429, headers={"Retry-After": "3600"})]
    await send(client, booking_event())

    first, second = await receiver.wait_for(2)
    assert first.webhook_id == second.webhook_id
    waited = second.at - first.at
    # Retry-After asks for an hour: honoured up to twice the scheduled 0.5 s (so >= 1 s, more
    # than the 0.6 s jitter allows), never more (generous slack for a slow machine).
    assert 0.95 <= waited <= 1.0 + 3.0


async def test_retry_after_shorter_than_the_schedule_waits_for_the_schedule(
    start: Start, receiver: Receiver
) -> None:
    client = await start(retry_schedule=[1.0])
    await subscribe(client, receiver.url())
    receiver.script = [Answer(503, headers={"Retry-After": "0"})]
    await send(client, booking_event())
    first, second = await receiver.wait_for(2)
    assert second.at - first.at >= 0.8 * 1.0 - 0.01


async def test_schedule_exhaustion_ends_dead(start: Start, receiver: Receiver) -> None:
    client = await start(retry_schedule=[0.05, 0.05])
    webhook = await subscribe(client, receiver.url())
    receiver.default = Answer(500)
    await send(client, booking_event())
    await wait_state(client, webhook["id"], "dead")

    listed = await attempts(client, webhook["id"])
    assert [(a["attempt"], a["outcome"]) for a in listed] == [
        (3, "dead"),
        (2, "retry"),
        (1, "retry"),
    ]
    assert len(receiver.requests) == 3
    assert (await get_webhook(client, webhook["id"]))["active"] is True  # not failing long


async def test_a_replayed_message_gets_the_whole_schedule_and_keeps_counting_attempts(
    start: Start, receiver: Receiver
) -> None:
    client = await start(retry_schedule=[0.05])
    webhook = await subscribe(client, receiver.url())
    receiver.default = Answer(500)
    since = datetime.now(UTC).isoformat()
    await send(client, booking_event())
    await wait_state(client, webhook["id"], "dead")

    replayed = await client.post(
        f"/octo/webhooks/{webhook['id']}/replay", json={"since": since}, headers=AUTH_A
    )
    assert await replayed.json() == {"replayed": 1}
    await receiver.wait_for(3)
    await wait_state(client, webhook["id"], "dead")

    listed = await attempts(client, webhook["id"])
    assert [(a["attempt"], a["outcome"]) for a in listed] == [
        (4, "dead"),
        (3, "retry"),  # the schedule starts over after a replay ...
        (2, "dead"),
        (1, "retry"),
    ]  # ... while the attempt numbers go on
    assert len({a["messageId"] for a in listed}) == 1
    assert len(receiver.requests) == 4


async def test_400_without_retry_on_error_is_dead_at_once(start: Start, receiver: Receiver) -> None:
    client = await start()
    webhook = await subscribe(client, receiver.url(), retryOnError=False)
    receiver.default = Answer(400, b"bad")
    await send(client, booking_event())
    await wait_state(client, webhook["id"], "dead")
    [attempt] = await attempts(client, webhook["id"])
    assert (attempt["attempt"], attempt["outcome"], attempt["status"]) == (1, "dead", 400)
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 503])
async def test_retryable_answers_are_retried_even_without_retry_on_error(
    start: Start, receiver: Receiver, status: int
) -> None:
    client = await start()
    webhook = await subscribe(client, receiver.url(), retryOnError=False)
    receiver.script = [Answer(status)]
    await send(client, booking_event())
    await wait_state(client, webhook["id"], "delivered")
    assert [a["status"] for a in await attempts(client, webhook["id"])] == [200, status]


async def test_redirects_are_not_followed(start: Start, receiver: Receiver) -> None:
    client = await start(retry_schedule=[0.05])
    webhook = await subscribe(client, receiver.url())
    receiver.default = Answer(302, b"", headers={"Location": receiver.url("/elsewhere")})
    await send(client, booking_event())
    await wait_state(client, webhook["id"], "dead")

    listed = await attempts(client, webhook["id"])
    assert [(a["outcome"], a["status"]) for a in listed] == [("dead", 302), ("retry", 302)]
    assert len(receiver.to("/hook")) == 2
    assert receiver.to("/elsewhere") == []


async def test_a_failing_render_is_a_failed_attempt_not_a_stuck_message(
    aiohttp_client: Any, fast_config: Callable[..., GatewayConfig], receiver: Receiver
) -> None:
    class Broken:
        @hookimpl
        def render_payload(self, event: str, payload: dict[str, Any], subscription: Any) -> Any:
            if payload.get("booking", {}).get("notes") == "update 1":
                raise RuntimeError("plugin bug")
            return None

    pm = make_plugin_manager(REPO / "plugins")
    pm.register(Broken(), name="broken")
    client = await aiohttp_client(create_app(fast_config(retry_schedule=[0.05]), pm=pm))
    webhook = await subscribe(client, receiver.url())
    await send(client, booking_event("test:a", 1), booking_event("test:b", 2))
    await wait_state(client, webhook["id"], "dead")
    await wait_state(client, webhook["id"], "delivered")
    dead = await attempts(client, webhook["id"], "?state=dead")
    assert [a["outcome"] for a in dead] == ["dead", "retry"]
    assert all("plugin bug" in a["error"] for a in dead)
    assert [notes(r) for r in receiver.requests] == ["update 2"]


# -- what the receiver gets ------------------------------------------------------------------


async def test_signature_verifies_with_standardwebhooks(start: Start, receiver: Receiver) -> None:
    client = await start()
    webhook = await subscribe(client, receiver.url())
    receiver.script = [Answer(500)]
    await send(client, booking_event())
    requests = await receiver.wait_for(2)
    for got in requests:
        payload = Webhook(webhook["secret"]).verify(got.body, got.headers)
        assert payload["booking"]["notes"] == "update 0"
        assert len(got.headers["webhook-signature"].split(" ")) == 1
        assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    with pytest.raises(Exception):  # noqa: B017 - whatever the library raises
        Webhook(webhook["secret"]).verify(requests[0].body + b" ", requests[0].headers)


async def test_rotated_secret_signs_with_both(start: Start, receiver: Receiver) -> None:
    client = await start()
    webhook = await subscribe(client, receiver.url())
    old = webhook["secret"]
    response = await client.post(f"/octo/webhooks/{webhook['id']}/rotate-secret", headers=AUTH_A)
    assert response.status == 200
    rotated = await response.json()
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    assert (await get_webhook(client, webhook["id"]))["secret"] == new
    assert "previousSecretExpiresAt" in rotated

    await send(client, booking_event())
    [got] = await receiver.wait_for(1)
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    Webhook(new).verify(got.body, got.headers)
    Webhook(old).verify(got.body, got.headers)
    for signature, secret in zip(signatures, [new, old], strict=True):
        alone = {**got.headers, "webhook-signature": signature}
        Webhook(secret).verify(got.body, alone)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(Exception):  # noqa: B017
        Webhook(other).verify(got.body, got.headers)


async def test_url_credentials_become_basic_auth(start: Start, receiver: Receiver) -> None:
    client = await start()
    url = receiver.url("/hook?x=1").replace("http://", "http://hook-user:p%40ss%3Aword@")
    webhook = await subscribe(client, url)
    assert "p%40ss" not in (await get_webhook(client, webhook["id"]))["url"]
    await send(client, booking_event())

    [got] = await receiver.wait_for(1)
    expected = base64.b64encode(b"hook-user:p@ss:word").decode()
    assert got.headers["authorization"] == f"Basic {expected}"
    assert got.path == "/hook?x=1"
    assert "@" not in got.host and "hook-user" not in got.host
    sent_url = got.json()["webhook"]["url"]
    assert "p%40ss" not in sent_url and "***" in sent_url
    [attempt] = await wait_attempts(client, webhook["id"], 1)
    assert attempt["outcome"] == "delivered"


async def test_subscription_headers_arrive(start: Start, receiver: Receiver) -> None:
    client = await start()
    await subscribe(
        client, receiver.url(), headers={"X-Api-Key": "k-123", "Authorization": "Bearer abc"}
    )
    await send(client, booking_event())
    [got] = await receiver.wait_for(1)
    assert got.headers["x-api-key"] == "k-123"
    assert got.headers["authorization"] == "Bearer abc"
    assert got.headers["content-type"] == "application/json"


async def test_url_credentials_win_over_an_authorization_header(
    start: Start, receiver: Receiver
) -> None:
    client = await start()
    url = receiver.url().replace("http://", "http://u:p@")
    await subscribe(client, url, headers={"authorization": "Bearer abc", "X-Other": "1"})
    await send(client, booking_event())
    [got] = await receiver.wait_for(1)
    assert got.headers["authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    assert got.headers["x-other"] == "1"


async def test_messages_of_a_deleted_subscription_are_skipped(
    start: Start, receiver: Receiver
) -> None:
    client = await start(timeout=10)
    webhook = await subscribe(client, receiver.url())
    receiver.script = [Answer(hang=True)]
    await send(client, booking_event(n=0), booking_event(n=1))
    await receiver.wait_for(1)
    deleted = await client.delete(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)
    assert deleted.status == 200
    receiver.release()
    await wait_state(client, webhook["id"], "skipped")
    assert [notes(r) for r in receiver.requests] == ["update 0"]


class CountingStore(SQLiteStore):
    claims = 0

    async def claim_deliveries(self, *args: Any, **kwargs: Any) -> list[DeliveryRecord]:
        self.claims += 1
        return await super().claim_deliveries(*args, **kwargs)


async def test_a_message_waiting_behind_a_retry_does_not_make_the_worker_spin(
    aiohttp_client: Any, fast_config: Callable[..., GatewayConfig], receiver: Receiver
) -> None:
    config = fast_config(retry_schedule=[2.0], poll_interval=0.5)
    store = CountingStore(config.storage.path)
    client = await aiohttp_client(create_app(config, store=store))
    await subscribe(client, receiver.url())
    receiver.script = [Answer(500)]
    await send(client, booking_event(n=0), booking_event(n=1))
    first = (await receiver.wait_for(1))[0]
    claims = store.claims
    second = (await receiver.wait_for(2))[1]
    # Update 1 is due all along but must wait for update 0's retry (>= 1.6 s away): the worker
    # sleeps until that retry or its poll interval (0.5 s), instead of claiming in a busy loop.
    assert (notes(first), notes(second)) == ("update 0", "update 0")
    assert second.at - first.at >= 1.5
    assert store.claims - claims < 40
    await receiver.wait_for(3)
    assert notes(receiver.requests[2]) == "update 1"


# -- ordering, coalescing, fairness ----------------------------------------------------------


async def test_updates_of_one_booking_arrive_in_order(start: Start, receiver: Receiver) -> None:
    client = await start(per_subscriber_concurrency=8)
    webhook = await subscribe(client, receiver.url())
    rng = random.Random(1234)
    first_try: set[str] = set()

    def decide(request: Received, index: int) -> Answer:
        delay = rng.uniform(0, 0.03)
        n = int(notes(request).split()[1])
        if n % 4 == 0 and request.webhook_id not in first_try:
            first_try.add(request.webhook_id)
            return Answer(500, delay=delay)
        return Answer(200, delay=delay)

    receiver.decide = decide
    subjects = ["test:one", "test:two", "test:three"]
    count = 12
    for n in range(count):
        await send(client, *[booking_event(subject, n) for subject in subjects])
    await wait_state(client, webhook["id"], "delivered", count * len(subjects))

    for subject in subjects:
        mine = [r for r in receiver.requests if r.json()["booking"]["uuid"] == _uuid(subject)]
        arrived = [int(notes(r).split()[1]) for r in mine]
        assert arrived == sorted(arrived), (subject, arrived)
        delivered = [int(notes(r).split()[1]) for r in mine if r.status == 200]
        assert delivered == list(range(count))


def _uuid(subject: str) -> str:
    return str(booking_event(subject).data["booking"]["uuid"])


async def test_pending_availability_is_coalesced_to_the_newest(
    start: Start, receiver: Receiver
) -> None:
    client = await start(timeout=10)
    webhook = await subscribe(client, receiver.url(), event="availability_update")
    receiver.script = [Answer(hang=True)]
    await send(client, availability_event(n=1))
    await receiver.wait_for(1)
    await send(client, availability_event(n=2))
    await send(client, availability_event(n=3), availability_event(n=4))
    superseded = await store_of(client).list_deliveries(webhook["id"], state="superseded")
    assert len(superseded) == 2
    receiver.release()

    await wait_state(client, webhook["id"], "delivered", 2)
    assert [r.json()["availability"]["vacancies"] for r in receiver.requests] == [1, 4]
    assert len(await store_of(client).list_deliveries(webhook["id"], state="superseded")) == 2
    assert len(await store_of(client).list_deliveries(webhook["id"])) == 4


async def test_a_slow_subscriber_does_not_delay_a_fast_one(
    start: Start, receiver: Receiver, other_receiver: Receiver
) -> None:
    client = await start(concurrency=16, per_subscriber_concurrency=4, timeout=10)
    slow = await subscribe(client, receiver.url())
    fast = await subscribe(client, other_receiver.url())
    receiver.default = Answer(hang=True)
    count = 20
    await send(client, *[booking_event(f"test:{n}", n) for n in range(count)])

    await other_receiver.wait_for(count)
    await wait_state(client, fast["id"], "delivered", count)
    # The slow one is still stuck on its first few (its own concurrency limit).
    await receiver.wait_for(4)
    assert len(receiver.requests) == 4
    assert await store_of(client).list_deliveries(slow["id"], state="delivered") == []

    receiver.release()
    await wait_state(client, slow["id"], "delivered", count)
    assert len(receiver.requests) == count


async def test_two_workers_on_one_database_never_send_twice(
    start: Start, fast_config: Callable[..., GatewayConfig], receiver: Receiver
) -> None:
    config = fast_config(per_subscriber_concurrency=8)
    first = await start(config)
    second = await start(config)
    await subscribe(first, receiver.url())
    await subscribe(second, receiver.url())
    receiver.decide = lambda request, index: Answer(delay=random.uniform(0, 0.01))

    count = 40
    for batch in range(4):
        events = [booking_event(f"test:{batch}-{n}", n) for n in range(count // 4)]
        await emit(store_of(first if batch % 2 else second), events)
        first.app[deliverer_key].wake()
        second.app[deliverer_key].wake()

    await receiver.wait_for(2 * count)
    store = store_of(first)
    for webhook in await store.list_subscriptions("reseller-a"):
        await wait_state(first, webhook.id, "delivered", count)
    seen = Counter(r.webhook_id for r in receiver.requests)
    assert len(seen) == 2 * count
    assert set(seen.values()) == {1}


# -- metrics and retention -------------------------------------------------------------------


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def test_metrics_after_deliveries(start: Start, receiver: Receiver) -> None:
    client = await start(timeout=10)
    webhook = await subscribe(client, receiver.url())
    receiver.script = [Answer(hang=True)]
    await send(client, booking_event(n=0), booking_event(n=1))
    await receiver.wait_for(1)

    waiting = await (await client.get("/metrics")).text()
    assert metric(waiting, "gateway_delivery_queue_depth") == 2.0
    oldest = metric(waiting, "gateway_delivery_oldest_pending_seconds")
    assert oldest is not None and oldest >= 0.0

    receiver.release()
    await wait_state(client, webhook["id"], "delivered", 2)
    text = await (await client.get("/metrics")).text()
    assert metric(text, 'gateway_deliveries_total{outcome="delivered"}') == 2.0
    assert metric(text, "gateway_delivery_attempt_duration_seconds_count") == 2.0
    assert 'gateway_delivery_attempt_duration_seconds_bucket{le="' in text
    assert metric(text, "gateway_delivery_queue_depth") == 0.0
    assert metric(text, "gateway_delivery_oldest_pending_seconds") == 0.0


async def test_maintenance_prunes_old_delivered_and_dead_messages(
    start: Start, receiver: Receiver, other_receiver: Receiver
) -> None:
    client = await start()
    good = await subscribe(client, receiver.url())
    bad = await subscribe(client, other_receiver.url(), retryOnError=False)
    other_receiver.default = Answer(400)
    before = time.time()
    await send(client, booking_event("test:a"), booking_event("test:b"))
    await wait_state(client, good["id"], "delivered", 2)
    await wait_state(client, bad["id"], "dead", 2)

    store = store_of(client)
    assert await store.apply_retention(Retention(messages_before=before - 1)) == {}
    assert len(await store.list_deliveries(good["id"])) == 2
    removed = await store.apply_retention(Retention(messages_before=time.time() + 1))
    assert removed == {"deliveries": 4, "attempts": 4, "events": 2}
    for webhook in (good, bad):
        assert await store.list_deliveries(webhook["id"]) == []
        assert await attempts(client, webhook["id"]) == []
    assert await store.apply_retention(Retention(messages_before=time.time() + 1)) == {}


async def test_subscription_failing_too_long_after_exhausted_messages_is_disabled(
    start: Start, receiver: Receiver
) -> None:
    # Messages die after 2 attempts; the subscription goes after failing for 0.36 s.
    client = await start(retry_schedule=[0.05], disable_after_hours=0.0001)
    webhook = await subscribe(client, receiver.url())
    receiver.default = Answer(500)
    await send(client, booking_event("test:first"))
    await wait_state(client, webhook["id"], "dead", 1)
    assert (await get_webhook(client, webhook["id"]))["active"] is True  # the streak only began

    await asyncio.sleep(0.5)
    await send(client, booking_event("test:second"))
    await wait_state(client, webhook["id"], "dead", 2)

    async def disabled() -> bool:
        return (await get_webhook(client, webhook["id"]))["active"] is False

    await wait_until_async(disabled, "the failing subscription to be disabled")
    assert "failing continuously" in (await get_webhook(client, webhook["id"]))["disabledReason"]
