"""What a tenant, a receiver or a PMS wrote reaches console pages as text, never as markup: URLs,
header values, booking fields, receivers' answers and errors, and stored pushes."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import store_key
from gateway.config import GatewayConfig
from tests.receivers import Answer, Receiver, booking_event, emit, subscribe, wait_attempts
from tests.tenants import ADMIN, TENANT_A
from tests.test_console import csrf_of, sign_in

MARKUP = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def assert_inert(page: str) -> None:
    """No markup of ours got through: only the console's own script tag is in the page."""
    assert "<script>alert" not in page and "<img src=x" not in page
    assert page.count("<script") == 1  # base.html's /console/static/console.js


@pytest.fixture
async def console(aiohttp_client: Any, fast_config: Callable[..., GatewayConfig]) -> Any:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_config()))
    return client


async def test_values_from_tenants_receivers_and_pms_are_escaped(
    console: Any, receiver: Receiver
) -> None:
    receiver.script = [Answer(status=500, body=MARKUP.encode())]
    webhook = await subscribe(console, receiver.url() + "?x=" + MARKUP, headers={"X-Note": MARKUP})
    event = booking_event("escape:1")
    event.data["booking"]["notes"] = MARKUP
    await emit(console.app[store_key], [event])
    found = await wait_attempts(console, webhook["id"], 2)
    message = found[0]["messageId"]

    await sign_in(console, str(TENANT_A["key"]))
    base = f"/console/subscriptions/{webhook['id']}"
    for path in ("/console/subscriptions", base, base + "/edit", f"{base}/messages/{message}"):
        page = await console.get(path)
        assert page.status == 200, path
        assert_inert(await page.text())
    shown = await (await console.get(f"{base}/messages/{message}")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown  # the receiver's answer, as text

    # A form sent back with markup in it comes back escaped with the error.
    csrf = await csrf_of(console, "/console/subscriptions/new")
    refused = await console.post(
        "/console/subscriptions",
        data={"csrf": csrf, "url": "ftp://x/" + MARKUP, "event": "booking_update"},
    )
    assert refused.status == 400
    assert_inert(await refused.text())


async def test_a_stored_push_is_escaped_on_the_admin_pages(console: Any) -> None:
    store = console.app[store_key]
    push, _ = await store.insert_push(
        source=MARKUP,
        kind=MARKUP,
        payload={"body": base64.b64encode(MARKUP.encode()).decode(), "note": MARKUP},
        dedupe_key=None,
        order_key=None,
        state="failed",
        error=MARKUP,
    )
    await sign_in(console, str(ADMIN["key"]))
    pushes = await console.get("/console/pushes?state=failed")
    assert push.id in await pushes.text()
    assert_inert(await pushes.text())
    page = await console.get(f"/console/pushes/{push.id}")
    assert page.status == 200
    text = await page.text()
    assert_inert(text)
    assert 'id="raw-body"' in text  # the body as received is shown, as text
