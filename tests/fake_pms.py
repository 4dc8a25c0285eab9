"""Fake Channex and Beds24 APIs (aiohttp apps serving the vendor samples) and an end-to-end harness.

``FakePMS`` answers what the gateway reads after a push:

- Channex, under ``/channex/api/v1``: ``GET booking_revisions/{id}``, ``GET booking_revisions/feed``
  (the revisions not yet acknowledged) and ``POST booking_revisions/{id}/ack``; every call must carry
  the ``user-api-key`` header.
- Beds24, under ``/beds24/api/v2``: ``GET bookings?id=N`` and ``GET inventory/rooms/calendar``; every
  call must carry the ``token`` header.

It records every request (acks included), can answer the next N reads with a 5xx, can hang, and can
be started late or stopped and started again on the same port (so the gateway sees a refused
connection meanwhile). ``Harness`` puts the gateway app, the fake PMS and subscriber receivers
together on loopback, with a real SQLite file in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from tests.octo_schema import load_fixture
from tests.postgres import SyncQuery, pg_dump
from tests.tenants import AUTH_A, AUTH_ADMIN

CHANNEX_KEY = "k"
BEDS24_TOKEN = "bt"
CHANNEX_TOKEN = "ctok"
BEDS24_INGEST_TOKEN = "btok"
CHANNEX_PREFIX = "/channex/api/v1"
BEDS24_PREFIX = "/beds24/api/v2"


async def eventually(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value: {value!r})")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


def channex_revision(fixture: str, revision_id: str, **attributes: Any) -> dict[str, Any]:
    """A Channex sample as the ``data`` of ``GET booking_revisions/{revision_id}``.

    Accepts both the ``booking_revision`` answer and the "booking message" examples (whose ``id``
    is the booking id); ``attributes`` override the sample's.
    """
    data: dict[str, Any] = copy.deepcopy(load_fixture(fixture)["data"])
    attrs = dict(data["attributes"])
    if data.get("type") == "booking":
        attrs.setdefault("booking_id", data["id"])
    attrs.update(attributes)
    attrs["id"] = revision_id
    return {"type": "booking_revision", "id": revision_id, "attributes": attrs}


def beds24_booking(**fields: Any) -> dict[str, Any]:
    """The Beds24 sample booking (``beds24-booking-get-1.json``) with ``fields`` changed."""
    booking: dict[str, Any] = copy.deepcopy(load_fixture("beds24-booking-get-1.json")["data"][0])
    booking.update(fields)
    return booking


class FakePMS:
    def __init__(self, *, db_path: Path | str | None = None) -> None:
        # Channex booking revisions by revision id, as ``data`` objects.
        self.channex_revisions: dict[str, dict[str, Any]] = {}
        self.acked: list[str] = []
        # For each ack: how many booking_update events the gateway had stored at that moment.
        self.events_at_ack: dict[str, int] = {}
        self.ack_status = 200
        # Revision ids whose ack answers 500 (whatever ack_status says).
        self.ack_failures: set[str] = set()
        # Beds24 bookings by id, and calendar entries by room id.
        self.beds24_bookings: dict[str, dict[str, Any]] = {}
        self.beds24_calendars: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[Recorded] = []
        self.failures = 0
        self.failure_status = 500
        self.hanging = False
        self._release = asyncio.Event()
        self.db_path = db_path
        self.server: TestServer | None = None
        self.port = free_port()

    # -- control -------------------------------------------------------------------------------

    def fail(self, times: int, status: int = 500) -> None:
        """Answer the next ``times`` reads (not acks) with ``status`` (before any hang)."""
        self.failures = times
        self.failure_status = status

    def hang(self) -> None:
        self.hanging = True
        self._release.clear()

    def release(self) -> None:
        self.hanging = False
        self._release.set()

    def add_revision(self, fixture: str, revision_id: str, **attributes: Any) -> dict[str, Any]:
        revision = channex_revision(fixture, revision_id, **attributes)
        self.channex_revisions[revision_id] = revision
        return revision

    def url(self, prefix: str) -> str:
        return str(URL.build(scheme="http", host="127.0.0.1", port=self.port, path=prefix))

    @property
    def channex_url(self) -> str:
        return self.url(CHANNEX_PREFIX)

    @property
    def beds24_url(self) -> str:
        return self.url(BEDS24_PREFIX)

    def calls(self, path_suffix: str, method: str = "GET") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    async def start(self) -> None:
        """Listen on ``self.port`` (the same port across restarts)."""
        if self.server is None:
            self.server = TestServer(self.app(), host="127.0.0.1", port=self.port)
            await self.server.start_server()

    async def stop(self) -> None:
        self.release()
        if self.server is not None:
            await self.server.close()
            self.server = None

    # -- the apps ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get(f"{CHANNEX_PREFIX}/booking_revisions/feed", self._channex_feed)
        app.router.add_get(f"{CHANNEX_PREFIX}/booking_revisions/{{id}}", self._channex_revision)
        app.router.add_post(f"{CHANNEX_PREFIX}/booking_revisions/{{id}}/ack", self._channex_ack)
        app.router.add_get(f"{BEDS24_PREFIX}/bookings", self._beds24_bookings)
        app.router.add_get(f"{BEDS24_PREFIX}/inventory/rooms/calendar", self._beds24_calendar)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        if request.path.startswith(CHANNEX_PREFIX):
            if request.headers.get("user-api-key") != CHANNEX_KEY:
                return web.json_response({"errors": {"code": "unauthorized"}}, status=401)
        elif request.headers.get("token") != BEDS24_TOKEN:
            return web.json_response({"success": False, "error": "token"}, status=401)
        if request.method == "GET" and self.failures > 0:
            self.failures -= 1
            return web.json_response({"error": "injected failure"}, status=self.failure_status)
        if self.hanging:
            await self._release.wait()
        response: web.StreamResponse = await handler(request)
        return response

    async def _channex_revision(self, request: web.Request) -> web.Response:
        revision = self.channex_revisions.get(request.match_info["id"])
        if revision is None:
            return web.json_response({"errors": {"code": "resource_not_found"}}, status=404)
        return web.json_response({"data": revision})

    async def _channex_feed(self, request: web.Request) -> web.Response:
        wanted = request.query.get("filter[property_id]")
        data = [
            revision
            for id, revision in self.channex_revisions.items()
            if id not in self.acked
            and (wanted is None or revision["attributes"].get("property_id") == wanted)
        ]
        # Pages of at most 10, as the vendor's sample answers, whatever limit is asked for.
        limit = min(int(request.query.get("pagination[limit]", "10")), 10)
        page = int(request.query.get("pagination[page]", "1"))
        window = data[(page - 1) * limit : page * limit]
        return web.json_response(
            {"meta": {"total": len(data), "page": page, "limit": limit}, "data": window}
        )

    async def _channex_ack(self, request: web.Request) -> web.Response:
        revision_id = request.match_info["id"]
        if self.db_path is not None:
            self.events_at_ack[revision_id] = count_rows(
                self.db_path, "select count(*) from events where event = 'booking_update'"
            )
        if self.ack_status != 200 or revision_id in self.ack_failures:
            status = self.ack_status if self.ack_status != 200 else 500
            return web.json_response({"errors": {"code": "injected"}}, status=status)
        self.acked.append(revision_id)
        return web.json_response({"meta": {"message": "Success"}})

    async def _beds24_bookings(self, request: web.Request) -> web.Response:
        booking = self.beds24_bookings.get(request.query.get("id", ""))
        data = [booking] if booking is not None else []
        return web.json_response(
            {"success": True, "type": "booking", "count": len(data), "data": data}
        )

    async def _beds24_calendar(self, request: web.Request) -> web.Response:
        room = request.query.get("roomId", "")
        start = date.fromisoformat(request.query["startDate"])
        end = date.fromisoformat(request.query["endDate"])
        entries = [
            entry
            for entry in self.beds24_calendars.get(room, [])
            if date.fromisoformat(entry["to"]) >= start and date.fromisoformat(entry["from"]) <= end
        ]
        item = {"roomId": int(room), "propertyId": 12345, "name": "Room", "calendar": entries}
        return web.json_response({"success": True, "type": "calendar", "count": 1, "data": [item]})


_queries: dict[str, SyncQuery] = {}


def close_queries() -> None:
    while _queries:
        _queries.popitem()[1].close()


def _query(db: str) -> SyncQuery:
    if db not in _queries:
        _queries[db] = SyncQuery(db)
    return _queries[db]


def execute_sql(db: Path | str, sql: str, params: list[Any] | None = None) -> None:
    """A write straight to the gateway's database (the SQLite file, or the PostgreSQL URL), for
    tests that set up what the API can't (an attempt made days ago)."""
    if isinstance(db, str):
        _query(db).execute(sql, params)
        return
    with sqlite3.connect(db, timeout=10) as conn:
        conn.execute(sql, params or [])
    conn.close()


def count_rows(db: Path | str, sql: str, params: list[Any] | None = None) -> int:
    """A count read straight from the gateway's database: a second connection to its SQLite file
    (read only), or to its PostgreSQL database (``db`` is then the URL)."""
    if isinstance(db, str):
        return int(_query(db).scalar(sql, params))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(sql, params or []).fetchone()[0])
    finally:
        conn.close()


class Receiver:
    """A subscriber endpoint that records every delivery and answers ``status``."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.status = 200

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append((dict(request.headers), body))
        return web.Response(status=self.status)

    def bodies(self, event: str | None = None) -> list[Any]:
        key = {"booking_update": "booking", "availability_update": "availability"}.get(event or "")
        return [body for _, body in self.requests if key is None or key in body]

    def bookings(self) -> list[dict[str, Any]]:
        return [body["booking"] for body in self.bodies("booking_update")]

    def availability(self) -> list[dict[str, Any]]:
        return [body["availability"] for body in self.bodies("availability_update")]


def source_settings(pms: FakePMS, **extra: dict[str, Any]) -> dict[str, Any]:
    channex = {"token": CHANNEX_TOKEN, "api_url": pms.channex_url, "api_key": CHANNEX_KEY}
    beds24 = {"token": BEDS24_INGEST_TOKEN, "api_url": pms.beds24_url, "api_token": BEDS24_TOKEN}
    channex.update(extra.get("channex", {}))
    beds24.update(extra.get("beds24", {}))
    return {"channex": channex, "beds24": beds24}


def gateway_overrides(pms: FakePMS, **sources: dict[str, Any]) -> dict[str, Any]:
    """What the tests pass to ``make_config``: fast retries, fast polling, private targets allowed."""
    return {
        "sources": source_settings(pms, **sources),
        "ingest": {"retry_base": 0.05, "retry_max": 0.2, "poll_interval": 0.05},
        "delivery": {
            "allow_private_targets": True,
            "poll_interval": 0.05,
            "retry_schedule": [0.05, 0.1],
            "shutdown_grace": 0.5,
        },
    }


@dataclass
class Harness:
    """The gateway on loopback, with helpers for pushing, subscribing and inspecting."""

    client: TestClient[Any, Any]
    pms: FakePMS
    config: Any
    bookings: Receiver = field(default_factory=lambda: Receiver())
    availability: Receiver = field(default_factory=lambda: Receiver())

    async def push(
        self,
        source: str,
        body: Any = None,
        *,
        data: bytes | str | None = None,
        method: str = "POST",
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = "default",
    ) -> ClientResponse:
        """POST (or ``method``) to /ingest/{source}; ``token`` goes in X-Gateway-Token."""
        all_headers = dict(headers or {})
        if token == "default":
            token = CHANNEX_TOKEN if source == "channex" else BEDS24_INGEST_TOKEN
        if token is not None:
            all_headers["X-Gateway-Token"] = token
        if body is not None:
            data = json.dumps(body)
            all_headers.setdefault("Content-Type", "application/json")
        response: ClientResponse = await self.client.request(
            method, f"/ingest/{source}", data=data, params=params, headers=all_headers
        )
        await response.read()
        return response

    async def push_ok(self, source: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        response = await self.push(source, body, **kwargs)
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer

    async def admin_push(self, push_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/admin/pushes/{push_id}", headers=AUTH_ADMIN)
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer

    async def wait_state(self, push_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            push = await self.admin_push(push_id)
            return push if push["state"] == state else None

        push: dict[str, Any] = await eventually(reached, timeout)
        return push

    async def subscribe(
        self,
        receiver_server: TestServer,
        event: str,
        auth: dict[str, str] = AUTH_A,
    ) -> dict[str, Any]:
        url = str(receiver_server.make_url(f"/hooks/{event}"))
        response = await self.client.post(
            "/octo/webhooks", json={"url": url, "event": event}, headers=auth
        )
        assert response.status == 200, await response.text()
        webhook: dict[str, Any] = await response.json()
        return webhook

    @property
    def db_path(self) -> Path:
        path: Path = self.config.storage.path
        return path

    def count(self, sql: str, params: list[Any] | None = None) -> int:
        return count_rows(self.config.storage.url or self.db_path, sql, params)

    def stored_bytes(self) -> bytes:
        """Every byte the gateway's database holds: the SQLite file and its WAL, or a dump of
        the PostgreSQL database."""
        url = self.config.storage.url
        if url is not None:
            return pg_dump(url)
        return b"".join(
            path.read_bytes()
            for path in self.db_path.parent.iterdir()
            if path.name.startswith(self.db_path.name)
        )

    def events(self, event: str | None = None) -> int:
        if event is None:
            return self.count("select count(*) from events")
        return self.count("select count(*) from events where event = ?", [event])

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until no push waits for processing and no delivery waits to be sent."""

        def idle() -> bool:
            return (
                self.count("select count(*) from pushes where state = 'accepted'") == 0
                and self.count(
                    "select count(*) from deliveries where state in ('pending', 'leased')"
                )
                == 0
            )

        await eventually(idle, timeout)


class Gateways:
    """Starts gateways (each with its own fake PMS and two subscribed receivers) for one test and
    stops the fake PMS servers afterwards; the app and receivers belong to pytest-aiohttp."""

    def __init__(self, aiohttp_client: Any, aiohttp_server: Any, make_config: Any) -> None:
        self.aiohttp_client = aiohttp_client
        self.aiohttp_server = aiohttp_server
        self.make_config = make_config
        self.pms_servers: list[FakePMS] = []

    def config(
        self, pms: FakePMS, sources: dict[str, dict[str, Any]] | None = None, **overrides: Any
    ) -> Any:
        raw = gateway_overrides(pms, **(sources or {}))
        for key, value in overrides.items():
            raw[key] = {**raw.get(key, {}), **value}
        return self.make_config(**raw)

    async def start(
        self,
        *,
        sources: dict[str, dict[str, Any]] | None = None,
        start_pms: bool = True,
        subscribe: bool = True,
        **overrides: Any,
    ) -> Harness:
        """A gateway whose sources read a fresh fake PMS; with ``subscribe``, tenant A has a
        booking_update and an availability_update receiver (``harness.bookings`` /
        ``harness.availability``)."""
        pms = FakePMS()
        self.pms_servers.append(pms)
        if start_pms:
            await pms.start()
        config = self.config(pms, sources, **overrides)
        pms.db_path = config.storage.url or config.storage.path
        harness = await self.app(config, pms)
        if subscribe:
            await harness.subscribe(
                await self.aiohttp_server(harness.bookings.app()), "booking_update"
            )
            await harness.subscribe(
                await self.aiohttp_server(harness.availability.app()), "availability_update"
            )
        return harness

    async def app(self, config: Any, pms: FakePMS) -> Harness:
        """A gateway app on ``config`` (e.g. a second one on the same database)."""
        from gateway.app import create_app

        client = await self.aiohttp_client(create_app(config))
        return Harness(client=client, pms=pms, config=config)

    async def receiver(self) -> tuple[Receiver, TestServer]:
        receiver = Receiver()
        server: TestServer = await self.aiohttp_server(receiver.app())
        return receiver, server

    async def close(self) -> None:
        for pms in self.pms_servers:
            await pms.stop()


REV_1 = "03dd7198-c5b7-493c-a889-74d0c2211de7"  # the revision of channex-booking-revision-1.json


def booking_push(revision_id: str = REV_1) -> dict[str, Any]:
    """The Channex booking push sample, naming ``revision_id``."""
    doc: dict[str, Any] = copy.deepcopy(load_fixture("channex-booking-1.json"))
    doc["payload"]["revision_id"] = revision_id
    return doc
