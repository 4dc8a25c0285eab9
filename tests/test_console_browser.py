"""The console in a real browser (Debian's Chromium): a reseller signs in, subscribes a loopback
receiver, sees a pushed booking delivered, opens the attempt and replays it; another tenant sees
none of it; a form without its CSRF token is refused; an admin sees pushes and the live view.

With UPDATE_SCREENSHOTS=1 it also writes the screenshots in docs/console/.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.browser import browser, screenshot
from tests.receivers import FAST_DELIVERY, Receiver
from tests.tenants import ADMIN, REPO, TENANT_A, TENANT_B

__all__ = ["browser"]

BEDS24_TOKEN = "btok-console"
WAIT_MS = 15_000


def beds24_push(booking_id: int) -> bytes:
    doc = json.loads((REPO / "plugins/beds24/samples/beds24-v2-booking-1.json").read_text("utf-8"))
    push: list[dict[str, Any]] = copy.deepcopy(doc)
    push[0]["booking"]["id"] = booking_id
    return json.dumps(push).encode()


@pytest.fixture
async def gateway(aiohttp_server: Any, make_config: Callable[..., GatewayConfig]) -> TestServer:
    config = make_config(
        delivery=FAST_DELIVERY,
        sources={"beds24": {"token": BEDS24_TOKEN, "api_url": "http://127.0.0.1:9/unused"}},
    )
    server: TestServer = await aiohttp_server(create_app(config))
    return server


async def sign_in(browser: Any, base: str, key: str, shot: str | None = None) -> tuple[Any, Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(base + "/console")
    assert page.url.endswith("/console/sign-in")
    if shot:
        await screenshot(page, shot)
    await page.fill("#api_key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(re.compile(r".*/console/subscriptions$"))
    return context, page


async def reload_until(page: Any, selector: str, count: int) -> None:
    """Reload until at least ``count`` elements match (deliveries happen in the background)."""

    async def enough() -> bool:
        await page.reload()
        return bool(await page.locator(selector).count() >= count)

    for _ in range(int(WAIT_MS / 200)):
        if await enough():
            return
        await page.wait_for_timeout(200)
    raise AssertionError(f"never saw {count} of {selector} on {page.url}")


@pytest.mark.timeout(120)
async def test_reseller_delivers_inspects_and_replays_in_a_browser(
    browser: Any, gateway: TestServer, aiohttp_client: Any, receiver: Receiver
) -> None:
    base = str(gateway.make_url("")).rstrip("/")
    context, page = await sign_in(browser, base, str(TENANT_A["key"]), shot="sign-in")

    # The session cookie: HttpOnly, SameSite=Strict, limited to /console.
    [cookie] = [c for c in await context.cookies() if c["name"] == "gateway_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert str(TENANT_A["key"]) not in cookie["value"]

    # Subscribe the loopback receiver.
    await page.click("text=New subscription")
    await page.fill("#url", receiver.url("/hook"))
    await page.select_option("#event", "booking_update")
    await page.fill("#headers", "X-Env: test\nX-Api-Key: hunter2")
    await page.click("button:has-text('Create subscription')")
    await page.wait_for_url(re.compile(r".*/console/subscriptions/[0-9a-f-]{36}$"))
    subscription_url = page.url
    assert "Subscription created" in await page.inner_text(".flash")
    assert await page.inner_text("#standing") == "active"

    # A push from the PMS: the booking reaches the receiver and its attempt shows in the log.
    http = await aiohttp_client(gateway)
    answer = await http.post(
        "/ingest/beds24", data=beds24_push(82279106), headers={"X-Gateway-Token": BEDS24_TOKEN}
    )
    assert answer.status == 200
    await receiver.wait_for(1, path="/hook")
    await reload_until(page, "#deliveries tr.attempt", 1)
    first_row = page.locator("#deliveries tr.attempt").first
    assert "delivered" in await first_row.inner_text()
    await screenshot(page, "subscription")

    # Open the attempt: headers (secrets masked), body, status, latency, response excerpt.
    await first_row.locator("a").click()
    await page.wait_for_url(re.compile(r".*/messages/msg_[0-9a-f]+$"))
    message_url = page.url
    message_id = message_url.rsplit("/", 1)[1]
    attempt = page.locator("#attempt-1")
    text = await attempt.inner_text()
    assert "delivered" in text and "200" in text
    assert f"webhook-id\t{message_id}" in text
    assert "v1,***" in text and "hunter2" not in text and "X-Env\ttest" in text
    assert '{"ok": true}' in await attempt.locator("pre.response").inner_text()
    body = json.loads(await page.inner_text("#body"))
    assert body["booking"]["supplierReference"] == "82279106"
    assert body["webhook"]["headers"] == {"X-Env": "test", "X-Api-Key": "***"}
    assert "hunter2" not in await page.content()
    assert receiver.to("/hook")[0].webhook_id == message_id

    # Replay it: a second attempt, same webhook-id, at the receiver and on the page.
    await page.click("button:has-text('Replay this message')")
    await page.wait_for_url(message_url)
    await receiver.wait_for(2, path="/hook")
    assert [r.webhook_id for r in receiver.to("/hook")] == [message_id, message_id]
    await reload_until(page, "details.attempt", 2)
    assert "delivered" in await page.inner_text("#attempt-2")
    await screenshot(page, "message")

    # Another tenant sees none of it: not in its list, and a 404 for the URLs themselves.
    other, other_page = await sign_in(browser, base, str(TENANT_B["key"]))
    assert receiver.url("/hook") not in await other_page.content()
    for url in (subscription_url, message_url):
        answer = await other_page.goto(url)
        assert answer.status == 404
        assert "not found" in (await other_page.inner_text("main")).lower()
    await other.close()

    # A form posted without its CSRF token (or with another session's) is refused; nothing changes.
    delete_url = subscription_url + "/delete"
    refused = await context.request.post(delete_url, form={}, max_redirects=0)
    assert refused.status == 403
    assert "CSRF" in await refused.text()
    forged = await context.request.post(delete_url, form={"csrf": "forged"}, max_redirects=0)
    assert forged.status == 403
    await page.goto(subscription_url)
    assert await page.inner_text("#standing") == "active"

    # Pause with the real form (its token), then sign out: the page is gone without a session.
    await page.click("button:has-text('Pause')")
    await page.wait_for_url(subscription_url)
    assert await page.inner_text("#standing") == "paused"
    await page.click("button:has-text('Sign out')")
    await page.wait_for_url(re.compile(r".*/console/sign-in$"))
    await page.goto(subscription_url)
    assert page.url.endswith("/console/sign-in")
    await context.close()


@pytest.mark.timeout(120)
async def test_admin_sees_pushes_replays_a_failed_one_and_the_live_view(
    browser: Any, gateway: TestServer, aiohttp_client: Any, receiver: Receiver
) -> None:
    base = str(gateway.make_url("")).rstrip("/")
    http = await aiohttp_client(gateway)
    # One push that can't be parsed (kept as failed) and one delivered booking for the charts.
    rejected = await http.post(
        "/ingest/beds24", data=b'{"booking": ', headers={"X-Gateway-Token": BEDS24_TOKEN}
    )
    assert rejected.status == 400
    failed_id = (await rejected.json())["id"]
    context, page = await sign_in(browser, base, str(ADMIN["key"]))
    await page.click("text=New subscription")
    await page.fill("#url", receiver.url("/hook"))
    await page.click("button:has-text('Create subscription')")
    await page.wait_for_url(re.compile(r".*/console/subscriptions/[0-9a-f-]{36}$"))
    await page.click("button:has-text('Send test')")
    assert "Test delivered: HTTP 200" in await page.inner_text(".flash")
    for n in range(3):
        await http.post(
            "/ingest/beds24", data=beds24_push(9000 + n), headers={"X-Gateway-Token": BEDS24_TOKEN}
        )
    await receiver.wait_for(4, path="/hook")
    await page.goto(base + "/console/subscriptions")
    await reload_until(page, ".subscription dd meter", 1)
    assert "100% of 3 attempts delivered" in await page.inner_text(".subscription")
    await screenshot(page, "subscriptions")

    await page.click("header >> text=Pushes")
    await page.wait_for_url(re.compile(r".*/console/pushes$"))
    assert failed_id in await page.inner_text("#pushes")
    await screenshot(page, "pushes")
    await page.click(f"text={failed_id}")
    assert "not valid JSON" in await page.inner_text("#push-error")
    assert await page.inner_text("#raw-body") == '{"booking": '
    assert '"method": "POST"' in await page.inner_text("#payload")
    await screenshot(page, "push")
    await page.click("button:has-text('Process again')")
    assert "Queued for processing again" in await page.inner_text(".flash")

    await page.click("header >> text=Live")
    await page.wait_for_url(re.compile(r".*/console/live$"))
    assert await page.locator("svg.chart").count() == 3
    assert int(await page.inner_text("#depth-now")) >= 0
    # The throughput chart drew a bar for the minute of the deliveries.
    assert await page.locator("svg.chart rect title").count() >= 1
    await screenshot(page, "live")

    # A reseller key is not an admin: the admin pages answer 403.
    reseller, reseller_page = await sign_in(browser, base, str(TENANT_A["key"]))
    for path in ("/console/pushes", "/console/live", f"/console/pushes/{failed_id}"):
        answer = await reseller_page.goto(base + path)
        assert answer.status == 403
    await reseller.close()
    await context.close()


@pytest.mark.timeout(120)
async def test_a_page_refreshing_in_place_goes_to_sign_in_when_the_session_ends(
    browser: Any, gateway: TestServer
) -> None:
    """The live view refreshes its panel every 5 s; once the session is gone that refresh leads
    the page to sign-in, instead of putting the sign-in page inside the panel."""
    base = str(gateway.make_url("")).rstrip("/")
    context, page = await sign_in(browser, base, str(ADMIN["key"]))
    await page.goto(base + "/console/live")
    assert await page.locator("#live svg.chart").count() == 3
    await context.clear_cookies()  # as when the session expires
    await page.wait_for_url(re.compile(r".*/console/sign-in$"), timeout=4 * WAIT_MS)
    assert await page.locator("#live").count() == 0
    await context.close()
