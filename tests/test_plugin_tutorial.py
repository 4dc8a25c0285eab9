"""The tutorial's plugin (docs/examples/roomly, a made-up PMS) loaded as a drop-in and run end to
end: a push in, its reservation read from a fake Roomly API on loopback, a schema-valid OCTO
booking delivered to a loopback receiver, the reservation acknowledged; its code is what the
tutorial in docs/plugin_hooks.md shows."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.appkeys import hooks_key, store_key
from gateway.config import ConfigError
from tests.conftest import AUTH_A, REPO
from tests.octo_schema import validate_octo
from tests.receivers import FAST_DELIVERY, WAIT, Receiver

EXAMPLES = REPO / "docs" / "examples"
ROOMLY = EXAMPLES / "roomly"
TOKEN = {"X-Gateway-Token": "roomly-token"}


def sample(name: str) -> Any:
    return json.loads((ROOMLY / "samples" / name).read_text())


class FakeRoomly:
    """Roomly's API on loopback: serves the sample reservation and records acknowledgements."""

    def __init__(self) -> None:
        self.reservation = sample("roomly-reservation-1.json")
        self.acknowledged: list[tuple[str, str]] = []
        self.keys: list[str | None] = []
        self.down = 0  # answer 503 this many times first

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/reservations/{id}", self.get)
        app.router.add_post("/v1/reservations/{id}/acknowledge", self.ack)
        return app

    async def get(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers.get("X-Roomly-Key"))
        if self.down:
            self.down -= 1
            return web.Response(status=503)
        answer = copy.deepcopy(self.reservation)
        answer["reservation"]["id"] = request.match_info["id"]
        return web.json_response(answer)

    async def ack(self, request: web.Request) -> web.Response:
        self.acknowledged.append((request.match_info["id"], request.query["version"]))
        return web.json_response({"ok": True})


async def until(check: Any) -> Any:
    for _ in range(int(WAIT / 0.05)):
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def roomly(aiohttp_server: Any) -> tuple[FakeRoomly, str]:
    fake = FakeRoomly()
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("/v1"))


@pytest.fixture
async def gateway(aiohttp_client: Any, make_config: Any, roomly: tuple[FakeRoomly, str]) -> Any:
    _, api_url = roomly
    config = make_config(
        plugins={"dir": str(EXAMPLES)},
        sources={"roomly": {"token": "roomly-token", "api_url": api_url, "api_key": "rk-1"}},
        delivery=FAST_DELIVERY,
        ingest={"poll_interval": 0.05, "retry_base": 0.05, "retry_max": 0.1},
    )
    return await aiohttp_client(create_app(config))


async def subscribe(client: Any, receiver: Receiver, event: str) -> str:
    response = await client.post(
        "/octo/webhooks", json={"url": receiver.url(), "event": event}, headers=AUTH_A
    )
    assert response.status == 200, await response.text()
    webhook_id: str = (await response.json())["id"]
    return webhook_id


async def test_a_reservation_push_is_delivered_as_an_octo_booking(
    gateway: Any, roomly: tuple[FakeRoomly, str], receiver: Receiver
) -> None:
    fake, _ = roomly
    fake.down = 1  # the first read fails: the push waits and is tried again
    webhook_id = await subscribe(gateway, receiver, "booking_update")
    pushed = await gateway.post(
        "/ingest/roomly", json=sample("roomly-webhook-reservation-1.json"), headers=TOKEN
    )
    assert pushed.status == 200, await pushed.text()

    [delivery] = await until(lambda: receiver.requests)
    body = delivery.json()
    booking = body["booking"]
    validate_octo("Booking", booking)
    assert booking["status"] == "CONFIRMED"
    assert booking["supplierReference"] == "R-1001"
    assert booking["resellerReference"] == "BDC-4411"
    assert [item["unitId"] for item in booking["unitItems"]] == ["adult", "adult", "child"]
    assert booking["contact"]["country"] == "GB"
    assert body["diff"] == []
    assert fake.keys == ["rk-1", "rk-1"]
    assert await until(lambda: fake.acknowledged) == [("R-1001", "3")]

    # The same version again (Roomly sending the webhook once more) is not sent twice.
    again = await gateway.post(
        "/ingest/roomly",
        json={**sample("roomly-webhook-reservation-1.json"), "sent_at": "2026-03-02T16:41:00Z"},
        headers=TOKEN,
    )
    assert (await again.json())["duplicate"] is False
    await until(lambda: fake.acknowledged[1:])  # processed and its (empty) outcome stored
    assert len(await gateway.app[store_key].list_deliveries(webhook_id)) == 1


async def test_a_full_payload_is_stored_without_its_card(
    gateway: Any, roomly: tuple[FakeRoomly, str], receiver: Receiver
) -> None:
    fake, _ = roomly
    await subscribe(gateway, receiver, "booking_update")
    cancelled = sample("roomly-reservation-1.json")["reservation"]
    cancelled.update(status="cancelled", version=4, cancelled_at="2026-03-03T08:00:00Z")
    push = {**sample("roomly-webhook-reservation-1.json"), "reservation": cancelled}
    answer = await gateway.post("/ingest/roomly", json=push, headers=TOKEN)
    assert answer.status == 200

    stored = await gateway.app[store_key].get_push((await answer.json())["id"])
    assert "4111111111111111" not in json.dumps(stored.payload)
    assert "cvv" not in json.dumps(stored.payload)
    [delivery] = await until(lambda: receiver.requests)
    booking = delivery.json()["booking"]
    validate_octo("Booking", booking)
    assert booking["status"] == "CANCELLED"
    assert booking["cancellation"]["utcCancelledAt"] == "2026-03-03T08:00:00Z"
    assert fake.keys == []  # nothing to read: the push carried the reservation


async def test_an_availability_push_is_delivered_per_day(gateway: Any, receiver: Receiver) -> None:
    await subscribe(gateway, receiver, "availability_update")
    answer = await gateway.post(
        "/ingest/roomly", json=sample("roomly-webhook-availability-1.json"), headers=TOKEN
    )
    assert answer.status == 200
    deliveries = await until(lambda: len(receiver.requests) == 3 and receiver.requests)
    days = {d.json()["availability"]["id"][:10]: d.json()["availability"] for d in deliveries}
    for availability in days.values():
        validate_octo("Availability", availability)
    assert days["2026-04-10"]["status"] == "LIMITED"
    assert days["2026-04-11"]["status"] == "SOLD_OUT"
    assert days["2026-04-12"]["status"] == "CLOSED"


async def test_a_push_roomly_never_sends_answers_400(gateway: Any) -> None:
    answer = await gateway.post(
        "/ingest/roomly",
        json={"event": "reservation.changed", "reservation_id": "../x"},
        headers=TOKEN,
    )
    assert answer.status == 400
    assert "reservation_id" in (await answer.json())["errorMessage"]


async def test_the_drop_in_is_listed_with_its_source(gateway: Any) -> None:
    hooks = gateway.app[hooks_key]
    assert hooks.source_owners["roomly"] == "gateway_plugins.roomly"
    assert set(hooks.sources()["roomly"].samples) == {"reservation", "availability"}


def test_its_settings_are_checked_naming_the_key(make_config: Any) -> None:
    for table, problem in [
        ({"token": "t", "api_kye": "x", "api_key": "k"}, "sources.roomly.api_kye: unknown key"),
        ({"token": "t"}, "sources.roomly.api_key: field required"),
    ]:
        config = make_config(plugins={"dir": str(EXAMPLES)}, sources={"roomly": table})
        with pytest.raises(ConfigError, match=re.escape(problem)):
            create_app(config)


def test_the_tutorial_shows_the_plugin_s_real_code() -> None:
    """Every Python block of the tutorial is in the example's files, word for word."""
    docs = (REPO / "docs" / "plugin_hooks.md").read_text()
    tutorial = docs[docs.index("## Tutorial: a source for Roomly") :]
    blocks = re.findall(r"```python\n(.*?)```", tutorial, re.S)
    code = "".join(path.read_text() for path in sorted(ROOMLY.glob("*.py")))
    assert len(blocks) >= 4
    for block in blocks:
        assert block in code, block[:200]
