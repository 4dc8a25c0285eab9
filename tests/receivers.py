"""Shared helpers for delivery tests: recording webhook receivers on real loopback HTTP, events
stored without a PMS, and a fast delivery config.

A ``Receiver`` is an aiohttp app that records every request and answers from a script of
``Answer``s (then ``default``), or through ``decide`` for answers that depend on the request. An
answer may ``hang`` until ``release()`` (tests must release before the server closes: the
``receiver`` fixtures in the test modules do it at teardown).
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.models import NewEvent
from gateway.samples import sample_data
from gateway.store.interface import Store
from tests.tenants import AUTH_A

FAST_DELIVERY: dict[str, Any] = {
    "allow_private_targets": True,
    "retry_schedule": [0.05, 0.1, 0.1, 0.1, 0.1],
    "poll_interval": 0.05,
    "timeout": 1,
    "connect_timeout": 0.5,
    "shutdown_grace": 1,
}
# The push processor is not used by tests that store events directly; a long poll keeps it
# from racing them for the pushes they insert.
QUIET_INGEST: dict[str, Any] = {"poll_interval": 3600}

WAIT = 15.0  # seconds a test waits for something that should happen at once


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # wait for release() before answering
    delay: float = 0.0
    chunks: int = 1  # stream the body in this many pieces, with a pause between them


@dataclass
class Received:
    method: str
    path: str  # path and query as sent (raw)
    host: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when it arrived
    status: int | None = None  # what the receiver answered (None while hanging)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


Decide = Callable[["Received", int], Answer | None]


class Receiver:
    def __init__(self, default: Answer | None = None) -> None:
        self.requests: list[Received] = []
        self.script: list[Answer] = []
        self.default = default or Answer()
        self.decide: Decide | None = None  # (request, index) -> Answer, or None for the script
        self._release = asyncio.Event()
        self.server: TestServer | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(self, aiohttp_server: Callable[..., Awaitable[TestServer]], **kw: Any) -> None:
        self.server = await aiohttp_server(self.app(), **kw)

    def url(self, path: str = "/hook") -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def release(self) -> None:
        self._release.set()

    def hold(self) -> None:
        self._release.clear()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(
            method=request.method,
            path=request.raw_path,
            host=request.headers.get("Host", ""),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
            at=time.monotonic(),
        )
        index = len(self.requests)
        self.requests.append(received)
        answer = self.decide(received, index) if self.decide is not None else None
        if answer is None:
            answer = self.script.pop(0) if self.script else self.default
        if answer.hang:
            await asyncio.wait_for(self._release.wait(), 30)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        received.status = answer.status
        if answer.chunks <= 1:
            return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        await response.prepare(request)
        size = -(-len(answer.body) // answer.chunks)
        for start in range(0, len(answer.body), size):
            await response.write(answer.body[start : start + size])
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path.split("?")[0] == path]

    def answered(self, ok: bool = True) -> list[Received]:
        """Requests already answered (2xx when ``ok``)."""
        return [r for r in self.requests if r.status is not None and (200 <= r.status < 300) == ok]

    async def wait_for(self, count: int, *, path: str | None = None) -> list[Received]:
        """Wait until at least ``count`` requests (to ``path``) arrived; returns them."""

        def seen() -> list[Received]:
            return self.requests if path is None else self.to(path)

        await wait_until(lambda: len(seen()) >= count, f"{count} requests at the receiver")
        return seen()


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_until_async(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- events ----------------------------------------------------------------------------------


def booking_event(subject: str = "test:booking-1", n: int = 0) -> NewEvent:
    """Update number ``n`` of one booking (``subject``): its notes say which update it is."""
    booking = copy.deepcopy(sample_data("booking_update")["booking"])
    booking_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, subject))
    booking["id"] = booking["uuid"] = booking_uuid
    booking["notes"] = f"update {n}"
    return NewEvent(
        event="booking_update",
        subject=subject,
        product_id=booking["productId"],
        option_id=booking["optionId"],
        data={"booking": booking},
        state_key=subject,
    )


def availability_event(subject: str = "test:room-1|rate-1|2030-01-01", n: int = 0) -> NewEvent:
    """Availability number ``n`` of one product, option and day (``subject``): ``n`` vacancies."""
    sample = sample_data("availability_update")
    availability = copy.deepcopy(sample["availability"])
    availability["vacancies"] = n
    return NewEvent(
        event="availability_update",
        subject=subject,
        product_id=sample["productId"],
        option_id=sample["optionId"],
        data={"availability": availability},
        state_key=subject,
    )


def notes(request: Received) -> str:
    return str(request.json()["booking"]["notes"])


async def emit(store: Store, events: list[NewEvent]) -> int:
    """Store ``events`` as the processing of one push would, fanned out to the subscriptions;
    returns how many deliveries there are to send."""
    # Leased at insert: a running processor polling in between can't take it from us.
    push, _ = await store.insert_push(
        source="test", kind="events", payload={}, dedupe_key=None, order_key=None, lease_seconds=60
    )
    assert push.lease_token is not None
    created = await store.complete_push(push.id, push.lease_token, events)
    assert created is not None
    return created


# -- the API ---------------------------------------------------------------------------------


async def subscribe(
    client: TestClient[Any, Any],
    url: str,
    event: str = "booking_update",
    auth: dict[str, str] = AUTH_A,
    **fields: Any,
) -> dict[str, Any]:
    response = await client.post(
        "/octo/webhooks", json={"url": url, "event": event, **fields}, headers=auth
    )
    assert response.status == 200, await response.text()
    webhook: dict[str, Any] = await response.json()
    return webhook


async def attempts(
    client: TestClient[Any, Any], webhook_id: str, query: str = "", auth: dict[str, str] = AUTH_A
) -> list[dict[str, Any]]:
    response = await client.get(f"/octo/webhooks/{webhook_id}/deliveries{query}", headers=auth)
    assert response.status == 200, await response.text()
    found: list[dict[str, Any]] = await response.json()
    return found


async def wait_attempts(
    client: TestClient[Any, Any], webhook_id: str, count: int, query: str = ""
) -> list[dict[str, Any]]:
    """Wait until the API lists at least ``count`` attempts."""
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        found[:] = await attempts(client, webhook_id, query)
        return len(found) >= count

    await wait_until_async(enough, f"{count} attempts listed for {webhook_id}")
    return found
