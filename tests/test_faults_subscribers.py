"""Fault injection, subscribers (issue 12): receivers that refuse connections, reset them mid-body,
trickle their answers, hang for 30 s, answer 429 storms with Retry-After, or redirect to a private
address. Every message still ends delivered (or dead on schedule) under the same webhook-id, the
bad receiver never holds up a good one, and a redirect is never followed.

Receivers are real sockets on loopback: ``tests.receivers.Receiver`` (aiohttp) for well-formed
answers, ``RawReceiver`` (asyncio streams) for the broken ones aiohttp would not send. Timeouts in
the test config are small (1 s) so a 30 s hang costs the test a second.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import deliverer_key, store_key
from gateway.config import GatewayConfig
from tests.raw_tcp import TcpServer
from tests.receivers import (
    Answer,
    Receiver,
    attempts,
    availability_event,
    booking_event,
    emit,
    free_port,
    notes,
    subscribe,
    wait_until,
    wait_until_async,
)

Start = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def start(aiohttp_client: Any, fast_config: Callable[..., GatewayConfig]) -> Start:
    async def start_(**delivery: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_config(**delivery)))
        return client

    return start_


async def send(client: TestClient[Any, Any], *events: Any) -> None:
    await emit(client.app[store_key], list(events))
    client.app[deliverer_key].wake()


async def states(client: TestClient[Any, Any], webhook_id: str) -> list[str]:
    found = await client.app[store_key].list_deliveries(webhook_id, limit=1000)
    return [d.state for d in found]


async def all_in(client: TestClient[Any, Any], webhook_id: str, state: str, count: int) -> None:
    async def reached() -> bool:
        found = await states(client, webhook_id)
        return len(found) == count and set(found) == {state}

    await wait_until_async(reached, f"{count} deliveries {state}", timeout=20)


# -- a receiver that breaks HTTP -------------------------------------------------------------


@dataclass
class RawRequest:
    head: bytes
    body: bytes

    @property
    def webhook_id(self) -> str:
        for line in self.head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "webhook-id":
                return value.strip()
        raise AssertionError("no webhook-id header")


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, RawRequest], Awaitable[None]]


class RawReceiver(TcpServer):
    """An HTTP/1.1 endpoint written by hand, so it can misbehave: ``behaviour`` gets each request
    (head read, body read as far as ``read_body`` says) and answers it, or doesn't."""

    def __init__(self, behaviour: Behaviour, *, read_body: bool = True, port: int = 0) -> None:
        super().__init__(self._handle, port=port)
        self.behaviour = behaviour
        self.read_body = read_body
        self.requests: list[RawRequest] = []

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await reader.readexactly(length) if self.read_body else b""
        request = RawRequest(head, body)
        self.requests.append(request)
        await self.behaviour(reader, writer, request)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER 0), as a crashing server does."""
    sock: socket.socket = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"


@pytest.fixture
async def raw_receivers() -> AsyncIterator[list[RawReceiver]]:
    started: list[RawReceiver] = []
    yield started
    for receiver in started:
        await receiver.stop()


async def raw(started: list[RawReceiver], behaviour: Behaviour, **kw: Any) -> RawReceiver:
    receiver = RawReceiver(behaviour, **kw)
    await receiver.start()
    started.append(receiver)
    return receiver


# -- connection refused and reset ------------------------------------------------------------


async def test_refused_then_reset_mid_request_then_up_delivers_once_under_one_id(
    start: Start, raw_receivers: list[RawReceiver], aiohttp_server: Any
) -> None:
    port = free_port()
    client = await start(retry_schedule=[0.2] * 20)
    webhook = await subscribe(client, f"http://127.0.0.1:{port}/hook")
    await send(client, booking_event())

    async def refused() -> bool:
        return any(
            "connect" in (a["error"] or "").lower() for a in await attempts(client, webhook["id"])
        )

    await wait_until_async(refused, "an attempt refused")

    # Now something listens there but drops the connection half way through the request body.
    async def drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest
    ) -> None:
        await reader.read(100)
        reset(writer)

    breaker = RawReceiver(drop, read_body=False, port=port)
    await breaker.start()
    raw_receivers.append(breaker)
    await wait_until(lambda: len(breaker.requests) >= 2, "two requests reset mid-body")
    await breaker.stop()

    good = Receiver()
    await good.start(aiohttp_server, port=port)
    [got] = await good.wait_for(1)
    await all_in(client, webhook["id"], "delivered", 1)
    ids = {r.webhook_id for r in breaker.requests} | {got.webhook_id}
    assert len(ids) == 1
    listed = await attempts(client, webhook["id"])
    assert listed[0]["outcome"] == "delivered"
    assert all(a["outcome"] == "retry" and a["status"] is None for a in listed[1:])
    good.release()


async def test_an_answer_reset_after_its_status_line_counts_by_its_status(
    start: Start, raw_receivers: list[RawReceiver]
) -> None:
    """A 200 whose body is cut off by a reset was received: the subscriber said 200. A 500 cut
    the same way is a 500 (retried)."""
    client = await start(retry_schedule=[0.1] * 5)

    def cut(status: bytes) -> Behaviour:
        async def behaviour(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest
        ) -> None:
            writer.write(status + b"Content-Length: 4000\r\n\r\n" + b'{"ok"')
            await writer.drain()
            await asyncio.sleep(0.05)
            reset(writer)

        return behaviour

    ok = await raw(raw_receivers, cut(b"HTTP/1.1 200 OK\r\n"))
    failing = await raw(raw_receivers, cut(b"HTTP/1.1 500 Oops\r\n"))
    ok_hook = await subscribe(client, ok.url())
    failing_hook = await subscribe(client, failing.url())
    await send(client, booking_event())

    await all_in(client, ok_hook["id"], "delivered", 1)
    assert len(ok.requests) == 1
    [done] = await attempts(client, ok_hook["id"])
    assert (done["outcome"], done["status"]) == ("delivered", 200)
    await wait_until(lambda: len(failing.requests) >= 2, "the cut 500 to be retried")
    retried = await attempts(client, failing_hook["id"])
    assert {a["status"] for a in retried} == {500}


# -- slow answers ----------------------------------------------------------------------------


async def test_trickled_answers_are_bounded_by_the_timeout(
    start: Start, raw_receivers: list[RawReceiver], receiver: Receiver
) -> None:
    """Headers trickled a byte at a time past the timeout: a timed-out attempt, retried. A 200
    whose body trickles: delivered, without waiting for the body. Neither holds up a healthy
    subscriber."""
    client = await start(timeout=1, retry_schedule=[0.2] * 20)

    async def trickle_head(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest
    ) -> None:
        for byte in OK_HEAD:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.3)

    async def trickle_body(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest
    ) -> None:
        writer.write(OK_HEAD)
        for _ in range(40):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.3)

    slow_head = await raw(raw_receivers, trickle_head)
    slow_body = await raw(raw_receivers, trickle_body)
    head_hook = await subscribe(client, slow_head.url())
    body_hook = await subscribe(client, slow_body.url())
    healthy = await subscribe(client, receiver.url())
    await send(client, *(booking_event(f"test:b{n}") for n in range(3)))

    await all_in(client, healthy["id"], "delivered", 3)
    await all_in(client, body_hook["id"], "delivered", 3)
    assert len(slow_body.requests) == 3  # each once: its 200 counted
    await wait_until(lambda: len(slow_head.requests) >= 6, "the slow headers to be retried")
    timed_out = [a for a in await attempts(client, head_hook["id"]) if a["error"]]
    assert timed_out and all(a["error"] == "timed out" for a in timed_out)
    assert all(a["latencyMs"] < 5000 for a in timed_out)  # 1 s timeout, not 12 s of trickle
    assert "delivered" not in await states(client, head_hook["id"])


async def test_a_30_second_hang_costs_one_timeout_and_holds_up_nobody(
    start: Start, receiver: Receiver, other_receiver: Receiver
) -> None:
    client = await start(timeout=1, retry_schedule=[0.2] * 20, shutdown_grace=0.5)
    receiver.default = Answer(hang=True)  # waits up to 30 s for release()
    hanging = await subscribe(client, receiver.url())
    healthy = await subscribe(client, other_receiver.url())
    await send(client, *(booking_event(f"test:b{n}") for n in range(5)))

    await all_in(client, healthy["id"], "delivered", 5)
    await wait_until(lambda: len(receiver.requests) >= 10, "the hung messages to be retried")
    retried = await attempts(client, hanging["id"])
    assert all(a["error"] == "timed out" and a["latencyMs"] < 5000 for a in retried)
    assert len({r.webhook_id for r in receiver.requests}) == 5  # retries keep their ids

    receiver.release()
    receiver.default = Answer()
    await all_in(client, hanging["id"], "delivered", 5)


# -- 429 storms ------------------------------------------------------------------------------


async def test_a_429_storm_pauses_the_subscription_for_retry_after(
    start: Start, receiver: Receiver, other_receiver: Receiver
) -> None:
    """200 waiting messages and a receiver answering 429 Retry-After: 1 for its first 2 s: the
    gateway waits as asked for the whole subscription instead of trying every message once a
    second (hundreds of requests into the storm). Another subscriber is not slowed."""
    client = await start(retry_schedule=[0.5] * 10, per_subscriber_concurrency=8)
    stormy = await subscribe(client, receiver.url(), event="availability_update")
    calm = await subscribe(client, other_receiver.url(), event="availability_update")
    storm = {"on": True}

    def decide(request: Any, index: int) -> Answer | None:
        if storm["on"]:
            return Answer(429, b'{"error": "slow down"}', headers={"Retry-After": "1"})
        return None

    receiver.decide = decide
    days = [f"test:room-1|rate-1|2030-01-{d:02d}" for d in range(1, 29)]
    events = [availability_event(f"{day}-{n}", n) for n in range(8) for day in days[:25]]
    await send(client, *events)  # 200 distinct subjects: nothing orders them

    await all_in(client, calm["id"], "delivered", 200)
    await asyncio.sleep(2)
    storm["on"] = False
    during = len(receiver.requests)
    # Without the pause: every message once per second, 400 or so. With it: what was in flight
    # when the 429s came (8), once per Retry-After, plus slack for a slow machine.
    assert during <= 8 * 5, f"{during} requests into a 429 storm"

    await all_in(client, stormy["id"], "delivered", 200)
    sent: dict[str, list[float]] = {}
    for request in receiver.requests:
        sent.setdefault(request.webhook_id, []).append(request.at)
    assert len(sent) == 200
    for times in sent.values():  # a message retried after a 429 waited at least Retry-After
        assert all(b - a >= 0.95 for a, b in itertools.pairwise(times))


async def test_per_booking_order_holds_through_a_429_storm(
    start: Start, receiver: Receiver
) -> None:
    client = await start(retry_schedule=[0.2] * 20)
    webhook = await subscribe(client, receiver.url())
    storm = {"left": 12}

    def decide(request: Any, index: int) -> Answer | None:
        if storm["left"] > 0:
            storm["left"] -= 1
            return Answer(429, headers={"Retry-After": "0"})
        return None

    receiver.decide = decide
    await send(client, *(booking_event(f"test:b{b}", n) for n in range(4) for b in range(3)))
    await all_in(client, webhook["id"], "delivered", 12)
    for b in range(3):
        seen = [
            notes(r)
            for r in receiver.requests
            if r.status == 200
            and r.json()["booking"]["id"] == booking_event(f"test:b{b}").data["booking"]["id"]
        ]
        assert seen == [f"update {n}" for n in range(4)]


# -- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_a_private_address_is_never_followed(
    start: Start, receiver: Receiver, other_receiver: Receiver, status: int
) -> None:
    client = await start(retry_schedule=[0.05, 0.05])
    webhook = await subscribe(client, receiver.url())
    # The lure: the loopback receiver of another tenant, and the cloud metadata address.
    for location in (other_receiver.url("/steal"), "http://169.254.169.254/latest/meta-data/"):
        receiver.script.append(Answer(status, b"", headers={"Location": location}))
    receiver.default = Answer(status, b"", headers={"Location": other_receiver.url("/steal")})
    await send(client, booking_event())
    await all_in(client, webhook["id"], "dead", 1)
    assert other_receiver.requests == []
    assert [a["status"] for a in await attempts(client, webhook["id"])] == [status] * 3
