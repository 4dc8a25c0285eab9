"""GET /openapi.json is a valid OpenAPI 3.1 document covering every route, and /docs shows it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.hookspecs import hookimpl
from gateway.plugins import make_plugin_manager
from gateway.web.openapi import operation_of, route_path
from tests.openapi_support import assert_documented
from tests.receivers import Receiver
from tests.tenants import AUTH_A, AUTH_ADMIN, REPO
from tests.test_storage_faults import locked

SANDBOX = {
    "sandbox": {"enabled": True},
    "sources": {
        "channex": {"token": "tok-channex", "api_url": "sandbox"},
        "beds24": {"token": "tok-beds24", "api_url": "sandbox"},
    },
}
# Pages for people, not API: the only paths a route may be hidden from the document under.
HIDDEN_PREFIXES = ("/console", "/static/")


@pytest.fixture
async def api(aiohttp_client: Any, make_config: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(make_config(**SANDBOX), workers=False)
    )
    return client


async def document(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def test_document_is_valid_openapi_3_1(api: TestClient[Any, Any]) -> None:
    doc = await document(api)
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any violation of the specification


async def test_every_registered_route_is_described(api: TestClient[Any, Any]) -> None:
    """Walks the router itself: a route added anywhere (handlers, plugins) without @describe
    fails here, and only pages for people may be hidden."""
    doc = await document(api)
    checked = 0
    for route in api.app.router.routes():
        if route.method == "HEAD":
            continue
        path = route_path(route)
        op = operation_of(route.handler)
        if op is not None and op.hidden:
            assert path.startswith(HIDDEN_PREFIXES), f"{route.method} {path} is hidden"
            continue
        assert path in doc["paths"], f"{route.method} {path} is missing"
        described = doc["paths"][path][route.method.lower()]
        assert not described.get("x-undescribed"), f"{route.method} {path}: add @describe"
        assert described["responses"]["200"]
        checked += 1
    # The API, health, metrics, ingest, the document itself and the plugins' sandbox routes.
    assert checked >= 20
    for path in ("/octo/webhooks/{id}/deliveries", "/admin/pushes/{id}/replay", "/ingest/{source}"):
        assert path in doc["paths"]


async def test_an_undescribed_plugin_route_is_listed_and_flagged(
    aiohttp_client: Any, config: GatewayConfig
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({})

    class Plugin:
        @hookimpl
        def register_routes(self, register: Any) -> None:
            register("GET", "/hello/{name}", hello)

    pm = make_plugin_manager(REPO / "plugins")
    pm.register(Plugin(), name="hello-plugin")
    client = await aiohttp_client(create_app(config, pm=pm, workers=False))
    op = (await document(client))["paths"]["/hello/{name}"]["get"]
    assert op["x-undescribed"] is True
    assert op["parameters"][0]["name"] == "name"


async def test_errors_and_security_are_described(api: TestClient[Any, Any]) -> None:
    doc = await document(api)
    schemas = doc["components"]["schemas"]
    assert {"error", "errorMessage"} <= set(schemas["OctoErrorBody"]["required"])
    create = doc["paths"]["/octo/webhooks"]["post"]
    assert create["security"] == [{"apiKey": []}]
    assert {"400", "401", "413"} <= set(create["responses"])
    error_schema = create["responses"]["400"]["content"]["application/json"]["schema"]
    assert error_schema == {"$ref": "#/components/schemas/OctoErrorBody"}
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateWebhookBody"
    }
    assert "403" in doc["paths"]["/admin/pushes"]["get"]["responses"]
    ingest = doc["paths"]["/ingest/{source}"]["post"]
    assert ingest["security"] == [{"ingestToken": []}, {"ingestTokenQuery": []}]
    assert ingest["parameters"][0]["schema"]["enum"] == ["beds24", "channex"]
    assert "Retry-After" in ingest["responses"]["503"]["headers"]
    rejected = ingest["responses"]["400"]["content"]["application/json"]["schema"]
    assert rejected == {"$ref": "#/components/schemas/IngestRejected"}
    deliveries = doc["paths"]["/octo/webhooks/{id}/deliveries"]["get"]
    limit = next(p for p in deliveries["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 500}
    assert doc["paths"]["/healthz"]["get"]["security"] == []


async def test_real_answers_match_the_document(
    api: TestClient[Any, Any], aiohttp_server: Any
) -> None:
    """One real answer per main shape, checked against the schema the document gives it."""
    doc = await document(api)
    receiver = Receiver()
    await receiver.start(aiohttp_server)
    # allow_private_targets is off here: the receiver's loopback URL must be refused, as a 400
    # that matches the error schema.
    refused = await api.post(
        "/octo/webhooks", json={"url": receiver.url(), "event": "booking_update"}, headers=AUTH_A
    )
    assert refused.status == 400
    assert_documented(doc, "/octo/webhooks", "post", 400, await refused.json())
    created = await api.post(
        "/octo/webhooks",
        json={"url": "https://user:pw@93.184.216.34/hook", "event": "booking_update"},
        headers=AUTH_A,
    )
    webhook = await created.json()
    assert created.status == 200, webhook
    assert_documented(doc, "/octo/webhooks", "post", 200, webhook)
    path = "/octo/webhooks/{id}"
    listed = await api.get("/octo/webhooks", headers=AUTH_A)
    assert_documented(doc, "/octo/webhooks", "get", 200, await listed.json())
    rotated = await api.post(f"/octo/webhooks/{webhook['id']}/rotate-secret", headers=AUTH_A)
    assert_documented(doc, path + "/rotate-secret", "post", 200, await rotated.json())
    missing = await api.get("/octo/webhooks/nope", headers=AUTH_A)
    assert missing.status == 404
    assert_documented(doc, path, "get", 404, await missing.json())
    ingested = await api.post(
        "/ingest/channex", data=b"{not json", headers={"X-Gateway-Token": "tok-channex"}
    )
    assert ingested.status == 400
    rejected = await ingested.json()
    assert_documented(doc, "/ingest/{source}", "post", 400, rejected)
    push = await api.get(f"/admin/pushes/{rejected['id']}", headers=AUTH_ADMIN)
    assert_documented(doc, "/admin/pushes/{id}", "get", 200, await push.json())
    health = await api.get("/healthz")
    assert_documented(doc, "/healthz", "get", 200, await health.json())
    # A shape the document forbids is caught: the check is not vacuous.
    with pytest.raises(AssertionError, match="secret"):
        assert_documented(doc, path, "get", 200, {**webhook, "secret": "plain"})
    with pytest.raises(AssertionError, match="Additional properties"):
        assert_documented(doc, path, "get", 200, {**webhook, "surprise": 1})


async def test_docs_page_shows_every_operation_without_outside_assets(
    api: TestClient[Any, Any],
) -> None:
    doc = await document(api)
    response = await api.get("/docs")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            assert f'id="{op["operationId"]}"' in page, f"{method} {path}"
    assert "<script" not in page
    # Everything it loads comes from the gateway itself: works offline.
    for link in re.findall(r'(?:href|src)="([^"]+)"', page):
        assert link.startswith(("/", "#")), link
    css = await api.get("/static/pages.css")
    assert css.status == 200 and css.content_type == "text/css"


async def test_sandbox_calendar_reaches_the_last_day_without_error(
    api: TestClient[Any, Any],
) -> None:
    """Found by hand while fuzzing the sandbox routes: the day after 9999-12-31 was a 500."""
    response = await api.get(
        "/sandbox/beds24/inventory/rooms/calendar?startDate=9999-12-30&endDate=9999-12-31"
    )
    assert response.status == 200
    days = (await response.json())["data"][0]["calendar"]
    assert [d["from"] for d in days] == ["9999-12-30", "9999-12-31"]


async def test_a_storage_fault_answers_a_documented_503(
    aiohttp_client: Any, make_config: Any
) -> None:
    """Every /octo and /admin operation reads or writes the store, so each may answer 503 with
    Retry-After when storage is unavailable; the document says so, and a real one matches it."""
    config = make_config(storage={"write_timeout": 1})
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config, workers=False))
    doc = await document(client)
    for path, methods in doc["paths"].items():
        if path.startswith(("/octo", "/admin")):
            for method, operation in methods.items():
                answer = operation["responses"].get("503")
                assert answer is not None, f"{method.upper()} {path}"
                assert "Retry-After" in answer["headers"]
    async with locked(config.storage.path):  # another process holds the write lock
        refused = await client.post(
            "/octo/webhooks",
            json={"url": "https://93.184.216.34/hook", "event": "booking_update"},
            headers=AUTH_A,
        )
        assert refused.status == 503, await refused.text()
        assert int(refused.headers["Retry-After"]) > 0
        assert_documented(doc, "/octo/webhooks", "post", 503, await refused.json())
