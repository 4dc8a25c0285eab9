"""A NUL in an id, a filter or a subscriber URL: PostgreSQL refuses the character in any text (a
500 there until the web layer answered it), so every store answers the same 404 or 400."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.openapi_support import assert_documented
from tests.tenants import ADMIN, AUTH_A, AUTH_ADMIN, TENANT_A
from tests.test_console import csrf_of, sign_in

pytestmark = pytest.mark.both_stores

NUL_PATHS = [
    "/octo/webhooks/%00",
    "/octo/webhooks/%00/deliveries",
    "/octo/bookings/%00",
    "/admin/pushes/%00",
]
NUL_QUERIES = [
    "/octo/bookings?supplierReference=%00",
    "/octo/bookings?resellerReference=a%00",
    "/octo/availability?productId=p&optionId=%00&localDateStart=2026-01-01&localDateEnd=2026-01-02",
]


async def test_a_nul_in_a_path_or_query_is_a_404_or_400(
    aiohttp_client: Any, fast_config: Callable[..., GatewayConfig]
) -> None:
    client = await aiohttp_client(create_app(fast_config()))
    for path in NUL_PATHS:
        answer = await client.get(path, headers=AUTH_ADMIN)
        assert answer.status == 404, (path, await answer.text())
        assert (await answer.json())["error"] == "NOT_FOUND"
    for path in NUL_QUERIES:
        answer = await client.get(path, headers=AUTH_ADMIN)
        assert answer.status == 400, (path, await answer.text())
        assert "NUL" in (await answer.json())["errorMessage"]
    # Any operation may get one, and each documents the 400 it answers.
    doc = await (await client.get("/openapi.json")).json()
    for path in ("/octo/webhooks", "/admin/pushes/p1"):
        answer = await client.get(path + "?anything=%00", headers=AUTH_ADMIN)
        assert answer.status == 400
        documented = "/admin/pushes/{id}" if path.startswith("/admin") else path
        assert_documented(doc, documented, "get", 400, await answer.json())
    # Without a key it is still a 401 first: nothing is said about what exists.
    assert (await client.get("/octo/webhooks/%00")).status == 401

    await sign_in(client, str(ADMIN["key"]))
    for path in ("/console/subscriptions/%00", "/console/pushes/%00"):
        assert (await client.get(path)).status == 404, path


@pytest.mark.parametrize(
    "url", ["http://example.com/\x00", "http://example.com/a\nb", "http://example.com/{{ '\x00' }}"]
)
async def test_a_url_holding_a_control_character_is_refused(
    aiohttp_client: Any, fast_config: Callable[..., GatewayConfig], url: str
) -> None:
    client = await aiohttp_client(create_app(fast_config()))
    created = await client.post(
        "/octo/webhooks", json={"url": url, "event": "booking_update"}, headers=AUTH_A
    )
    assert created.status == 400, await created.text()
    assert "url:" in (await created.json())["errorMessage"]
    good = await client.post(
        "/octo/webhooks",
        json={"url": "http://example.com/", "event": "booking_update"},
        headers=AUTH_A,
    )
    assert good.status == 200
    webhook = await good.json()
    patched = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"url": url}, headers=AUTH_A
    )
    assert patched.status == 400, await patched.text()

    await sign_in(client, str(TENANT_A["key"]))
    csrf = await csrf_of(client, "/console/subscriptions/new")
    form = await client.post(
        "/console/subscriptions", data={"csrf": csrf, "url": url, "event": "booking_update"}
    )
    assert form.status == 400
    assert re.search(r"url: .*control characters", await form.text())
