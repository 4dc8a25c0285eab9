"""The console over plain HTTP: sessions, CSRF, tenant isolation, admin-only pages, and the store
queries behind its figures (on a real SQLite file, with deliveries to a loopback receiver)."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import store_key
from gateway.config import GatewayConfig
from gateway.web.console import session as console_session
from tests.fake_pms import execute_sql
from tests.receivers import (
    Answer,
    Receiver,
    booking_event,
    emit,
    subscribe,
    wait_attempts,
)
from tests.tenants import ADMIN, AUTH_A, TENANT_A, TENANT_B

# Both stores: the SQLite file and a PostgreSQL database.
pytestmark = pytest.mark.both_stores


async def sign_in(client: TestClient[Any, Any], key: str) -> None:
    """Sign in as a browser would: the form's token comes with the form."""
    form = await client.get("/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', await form.text())
    assert token is not None
    answer = await client.post(
        "/console/sign-in", data={"csrf": token.group(1), "api_key": key}, allow_redirects=False
    )
    assert answer.status == 303, await answer.text()


async def csrf_of(client: TestClient[Any, Any], path: str = "/console/subscriptions") -> str:
    page = await client.get(path)
    found = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert found is not None
    return found.group(1)


@pytest.fixture
async def console(aiohttp_client: Any, fast_config: Callable[..., GatewayConfig]) -> Any:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_config()))
    return client


async def test_sign_in_sets_a_strict_http_only_session_cookie(console: Any) -> None:
    form = await console.get("/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', await form.text())
    assert token is not None
    answer = await console.post(
        "/console/sign-in",
        data={"csrf": token.group(1), "api_key": TENANT_A["key"]},
        allow_redirects=False,
    )
    assert answer.status == 303
    assert answer.headers["Location"] == "/console/subscriptions"
    cookie = answer.cookies["gateway_console"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
    assert int(cookie["max-age"]) == console_session.SESSION_SECONDS
    assert str(TENANT_A["key"]) not in cookie.value and str(TENANT_A["key"]) not in str(answer.url)
    page = await console.get("/console/subscriptions")
    assert page.status == 200
    assert "reseller-a" in await page.text()
    for header in ("Content-Security-Policy", "X-Frame-Options", "Referrer-Policy"):
        assert header in page.headers
    assert page.headers["Cache-Control"] == "no-store"


async def test_a_wrong_key_or_a_sign_in_without_its_form_token_is_refused(console: Any) -> None:
    form = await console.get("/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', await form.text())
    assert token is not None
    wrong = await console.post(
        "/console/sign-in", data={"csrf": token.group(1), "api_key": "nope-nope-nope"}
    )
    assert wrong.status == 401
    assert "gateway_console" not in wrong.cookies
    # Posted from elsewhere (login CSRF): no form token, so no session even with a good key.
    console.session.cookie_jar.clear()
    forged = await console.post("/console/sign-in", data={"api_key": TENANT_A["key"]})
    assert forged.status == 403
    assert "gateway_console" not in forged.cookies
    assert (await console.get("/console/subscriptions", allow_redirects=False)).status == 303


def forged_cookie(name: str, secret: str, expires: float) -> str:
    payload = (
        base64.urlsafe_b64encode(json.dumps({"k": name, "e": int(expires), "n": "nonce"}).encode())
        .decode()
        .rstrip("=")
    )
    return f"{payload}.{console_session._sign(secret, 'session:' + payload)}"


@pytest.mark.parametrize(
    "secret, expires_in",
    [
        (str(TENANT_A["key"]), -10),  # signed right, but expired
        ("not-the-key-of-reseller-a", 3600),  # signed with the wrong key
    ],
)
async def test_expired_or_forged_sessions_are_refused(
    console: Any, secret: str, expires_in: float
) -> None:
    cookie = forged_cookie(str(TENANT_A["name"]), secret, time.time() + expires_in)
    answer = await console.get(
        "/console/subscriptions",
        headers={"Cookie": f"gateway_console={cookie}"},
        allow_redirects=False,
    )
    assert answer.status == 303
    assert answer.headers["Location"] == "/console/sign-in"
    # The same cookie signed right and unexpired is a session: the refusals above are the checks.
    good = forged_cookie(str(TENANT_A["name"]), str(TENANT_A["key"]), time.time() + 3600)
    ok = await console.get(
        "/console/subscriptions",
        headers={"Cookie": f"gateway_console={good}"},
        allow_redirects=False,
    )
    assert ok.status == 200


@pytest.mark.parametrize(
    "payload",
    [b"[" * 3000, b"[1, 2]", b'{"k": "reseller-a"}', b"\xff", b'{"k": 1, "e": "x", "n": 2}'],
)
async def test_a_made_up_session_cookie_is_no_session_and_no_500(
    console: Any, payload: bytes
) -> None:
    """Anyone can send any cookie: one that is not what the gateway signs (nested too deeply to
    parse, not an object, missing claims) is simply no session."""
    value = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    answer = await console.get(
        "/console/subscriptions",
        headers={"Cookie": f"gateway_console={value}.c2lnbmF0dXJl"},
        allow_redirects=False,
    )
    assert answer.status == 303
    assert answer.headers["Location"] == "/console/sign-in"


async def test_sign_out_ends_the_session_even_for_a_copied_cookie(console: Any) -> None:
    await sign_in(console, str(TENANT_A["key"]))
    copied = console.session.cookie_jar.filter_cookies(console.make_url("/console"))[
        "gateway_console"
    ].value
    csrf = await csrf_of(console)
    out = await console.post("/console/sign-out", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303
    replayed = await console.get(
        "/console/subscriptions",
        headers={"Cookie": f"gateway_console={copied}"},
        allow_redirects=False,
    )
    assert replayed.status == 303


async def test_forms_need_the_session_csrf_token(console: Any, receiver: Receiver) -> None:
    webhook = await subscribe(console, receiver.url())
    await sign_in(console, str(TENANT_B["key"]))
    other_csrf = await csrf_of(console)
    console.session.cookie_jar.clear()
    await sign_in(console, str(TENANT_A["key"]))
    path = f"/console/subscriptions/{webhook['id']}/delete"
    for data in ({}, {"csrf": "forged"}, {"csrf": other_csrf}):
        refused = await console.post(path, data=data, allow_redirects=False)
        assert refused.status == 403, data
    assert (await console.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)).status == 200
    done = await console.post(path, data={"csrf": await csrf_of(console)}, allow_redirects=False)
    assert done.status == 303
    assert (await console.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)).status == 404


async def test_a_tenant_cannot_see_or_change_another_tenants_subscription(
    console: Any, receiver: Receiver
) -> None:
    webhook = await subscribe(console, receiver.url())
    await sign_in(console, str(TENANT_B["key"]))
    listing = await console.get("/console/subscriptions")
    assert webhook["id"] not in await listing.text()
    base = f"/console/subscriptions/{webhook['id']}"
    for path in (base, base + "/edit", base + "/messages/msg_x", base + "/progress?since=1"):
        assert (await console.get(path)).status == 404, path
    csrf = await csrf_of(console)
    for action in ("/pause", "/delete", "/test", "/rotate", ""):
        answer = await console.post(base + action, data={"csrf": csrf, "url": "http://x/"})
        assert answer.status == 404, action
    still = await console.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)
    assert (await still.json())["active"] is True


async def test_admin_pages_need_an_admin_key(console: Any) -> None:
    await sign_in(console, str(TENANT_A["key"]))
    for path in ("/console/pushes", "/console/live", "/console/live/panel"):
        assert (await console.get(path)).status == 403, path
    console.session.cookie_jar.clear()
    await sign_in(console, str(ADMIN["key"]))
    for path in ("/console/pushes", "/console/live", "/console/live/panel"):
        assert (await console.get(path)).status == 200, path


async def test_form_errors_come_back_from_the_api_checks(console: Any) -> None:
    """The console creates through the API's own code: its validation answers on the form."""
    await sign_in(console, str(TENANT_A["key"]))
    csrf = await csrf_of(console, "/console/subscriptions/new")
    answer = await console.post(
        "/console/subscriptions",
        data={"csrf": csrf, "url": "ftp://example.com/x", "event": "booking_update"},
    )
    assert answer.status == 400
    assert "url:" in await answer.text()
    answer = await console.post(
        "/console/subscriptions",
        data={
            "csrf": csrf,
            "url": "http://127.0.0.1:9/x",
            "event": "booking_update",
            "headers": "Content-Type: text/plain",
        },
    )
    assert answer.status == 400
    assert "headers.Content-Type" in await answer.text()


async def test_store_figures_health_activity_and_single_message_replay(
    console: Any, receiver: Receiver, other_receiver: Receiver, config: GatewayConfig
) -> None:
    store = console.app[store_key]
    webhook = await subscribe(console, receiver.url())
    other = await subscribe(console, other_receiver.url())
    # First answer fails (retried), then deliveries succeed.
    receiver.script = [Answer(status=500)]
    await emit(store, [booking_event("console:b1", 0)])
    found = await wait_attempts(console, webhook["id"], 2)
    assert [a["outcome"] for a in reversed(found)] == ["retry", "delivered"]
    await wait_attempts(console, other["id"], 1)

    health = await store.subscription_health([webhook["id"], other["id"]], time.time() - 86400)
    mine = health[webhook["id"]]
    assert (mine.attempts, mine.delivered, mine.last_outcome, mine.last_status) == (
        2,
        1,
        "delivered",
        200,
    )
    assert mine.success_rate == 0.5
    activity = await store.delivery_activity(time.time() - 3600)
    assert sum(m.delivered for m in activity.minutes) == 2
    assert sum(m.failed for m in activity.minutes) == 1
    latencies = [m.latency_p50_ms for m in activity.minutes if m.latency_p50_ms is not None]
    assert latencies and all(value >= 0 for value in latencies)
    assert not activity.capped
    capped = await store.delivery_activity(time.time() - 3600, max_rows=1)
    assert capped.capped

    # An attempt older than the window still counts as the last one, not in the rate.
    execute_sql(
        config.storage.url or config.storage.path,
        "update attempts set attempted_at = attempted_at - 2 * 86400 where subscription_id = ?",
        [other["id"]],
    )
    aged = (await store.subscription_health([other["id"]], time.time() - 86400))[other["id"]]
    assert aged.attempts == 0 and aged.success_rate is None and aged.last_outcome == "delivered"

    message_id = found[0]["messageId"]
    message = await store.get_delivery(webhook["id"], message_id)
    assert message is not None and message.data["booking"]["notes"] == "update 0"
    assert await store.get_delivery(other["id"], message_id) is None  # scoped
    tries = await store.message_attempts(webhook["id"], message_id)
    assert [a.attempt for a in tries] == [1, 2]
    assert not await store.replay_delivery(other["id"], message_id)
    assert await store.replay_delivery(webhook["id"], message_id)
    await receiver.wait_for(3)
    assert [r.webhook_id for r in receiver.to("/hook")] == [message_id] * 3
    counts = await store.push_counts()
    assert counts.get("processed", 0) >= 1


async def test_an_attempts_headers_are_shown_as_the_receiver_got_them(
    console: Any, receiver: Receiver
) -> None:
    """The transport's own headers included (Host, User-Agent, Accept-Encoding, the length);
    the signature masked."""
    webhook = await subscribe(console, receiver.url(), headers={"X-Env": "test"})
    await emit(console.app[store_key], [booking_event("console:headers")])
    [attempt] = await wait_attempts(console, webhook["id"], 1)
    [got] = receiver.to("/hook")

    await sign_in(console, str(TENANT_A["key"]))
    page = await console.get(
        f"/console/subscriptions/{webhook['id']}/messages/{attempt['messageId']}"
    )
    rows = re.findall(
        r'<tr><td class="mono">([^<]*)</td><td class="mono">([^<]*)</td></tr>', await page.text()
    )
    shown = {name.lower(): value for name, value in rows}
    for name in ("host", "user-agent", "accept-encoding", "content-length", "content-type"):
        assert shown[name] == got.headers[name], name
    assert shown["x-env"] == "test" and shown["webhook-id"] == got.webhook_id
    assert shown["webhook-signature"].endswith(",***")
    assert got.headers["user-agent"].startswith("octo-gateway/")


UNREADABLE_FORMS = [
    ("application/x-www-form-urlencoded", b"csrf=x&api_key=\xff\xfe"),  # not UTF-8
    ("application/x-www-form-urlencoded; charset=no-such-charset", b"csrf=x"),
    ("multipart/form-data", b"--b\r\n\r\nx"),  # no boundary parameter
    ("multipart/form-data; boundary=b", b"garbage"),  # no starting boundary
]


@pytest.mark.parametrize("content_type, body", UNREADABLE_FORMS)
async def test_a_body_that_is_no_readable_form_is_a_400_not_a_500(
    console: Any, content_type: str, body: bytes
) -> None:
    """Only a script sends these, but a 500 is ours to avoid: sign-in and a signed-in POST both."""
    await console.get("/console/sign-in")  # the sign-in form's token cookie
    answer = await console.post(
        "/console/sign-in", data=body, headers={"Content-Type": content_type}
    )
    assert answer.status == 400, await answer.text()
    assert (await answer.json())["error"] == "BAD_REQUEST"
    await sign_in(console, str(TENANT_A["key"]))
    answer = await console.post(
        "/console/subscriptions", data=body, headers={"Content-Type": content_type}
    )
    assert answer.status == 400, await answer.text()
    assert "the form could not be read" in (await answer.json())["errorMessage"]


@pytest.mark.parametrize("public_url, secure", [(None, False), ("https://gw.example/", True)])
async def test_cookies_are_secure_behind_an_https_public_url(
    aiohttp_client: Any,
    make_config: Callable[..., GatewayConfig],
    public_url: str | None,
    secure: bool,
) -> None:
    """A proxy that ends TLS talks plain http to the gateway: request.secure is False there, yet
    browsers reach the console over https, so its cookies must never travel over plain http."""
    server = {"public_url": public_url} if public_url else {}
    client = await aiohttp_client(create_app(make_config(server=server)))
    form = await client.get("/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', await form.text())
    assert token is not None
    assert bool(form.cookies["gateway_console_signin"]["secure"]) is secure
    # A jar need not send a Secure cookie back over plain http: send the form's token by hand.
    answer = await client.post(
        "/console/sign-in",
        data={"csrf": token.group(1), "api_key": TENANT_A["key"]},
        headers={"Cookie": f"gateway_console_signin={token.group(1)}"},
        allow_redirects=False,
    )
    assert answer.status == 303
    cookie = answer.cookies["gateway_console"]
    assert bool(cookie["secure"]) is secure
    assert cookie["httponly"] and cookie["samesite"] == "Strict"


async def test_every_key_of_a_tenant_name_signs_in(
    aiohttp_client: Any, make_config: Callable[..., GatewayConfig], receiver: Receiver
) -> None:
    """Two keys may share a tenant name (a new key rotated in beside the old one): each one's
    sessions hold, and both see the tenant's subscriptions."""
    second = {**TENANT_A, "key": "key-a2-0123456789"}
    config = make_config(
        delivery={"allow_private_targets": True}, api_keys=[TENANT_A, second, TENANT_B, ADMIN]
    )
    client = await aiohttp_client(create_app(config))
    webhook = await subscribe(client, receiver.url())
    for key in (str(TENANT_A["key"]), str(second["key"])):
        client.session.cookie_jar.clear()
        await sign_in(client, key)
        page = await client.get("/console/subscriptions", allow_redirects=False)
        assert page.status == 200, key
        assert webhook["id"] in await page.text()


async def test_a_replay_time_given_with_an_offset_means_that_moment(
    console: Any, receiver: Receiver
) -> None:
    webhook = await subscribe(console, receiver.url())
    await sign_in(console, str(TENANT_A["key"]))
    path = f"/console/subscriptions/{webhook['id']}"
    answer = await console.post(
        path + "/replay",
        data={"csrf": await csrf_of(console, path), "since": "2026-11-29T05:00:00+05:00"},
        allow_redirects=False,
    )
    assert answer.status == 303
    midnight_utc = 1795910400  # 2026-11-29T00:00:00Z
    assert answer.headers["Location"] == f"{path}?replayed={midnight_utc}"
    page = await console.get(answer.headers["Location"])
    assert "since 2026-11-29 00:00 UTC" in await page.text()


async def test_every_console_post_needs_the_csrf_token_and_admin_ones_an_admin(
    console: Any, receiver: Receiver
) -> None:
    """Walks the router, so a form added later is held to the same rules: without the session's
    token every POST is a 403 and changes nothing; with it, a reseller gets 403 from admin ones."""
    webhook = await subscribe(console, receiver.url())
    await sign_in(console, str(TENANT_A["key"]))
    csrf = await csrf_of(console)
    posts = [
        route.resource.canonical.format(id=webhook["id"], message="msg_x")
        for route in console.app.router.routes()
        if route.method == "POST" and route.resource is not None
        if route.resource.canonical.startswith("/console")
        and route.resource.canonical != "/console/sign-in"  # its own token: tested above
    ]
    assert len(posts) >= 12, posts
    for path in posts:
        for data in ({}, {"csrf": csrf + "x"}):
            refused = await console.post(path, data=data, allow_redirects=False)
            assert refused.status == 403, (path, data)
            assert "CSRF" in await refused.text()
    for path in ("/console/pushes/replay-failed", "/console/pushes/p1/replay"):
        refused = await console.post(path, data={"csrf": csrf}, allow_redirects=False)
        assert refused.status == 403, path
        assert "for admins" in await refused.text()
    still = await console.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)
    assert still.status == 200 and (await still.json())["active"] is True


class Counted(float):
    """A time that counts how often it is compared."""

    compared = 0

    def __lt__(self, other: object) -> bool:
        Counted.compared += 1
        return float(self) < other  # type: ignore[operator]

    def __le__(self, other: object) -> bool:
        Counted.compared += 1
        return float(self) <= other  # type: ignore[operator]

    def __gt__(self, other: object) -> bool:
        Counted.compared += 1
        return float(self) > other  # type: ignore[operator]

    def __ge__(self, other: object) -> bool:
        Counted.compared += 1
        return float(self) >= other  # type: ignore[operator]


def test_a_sign_out_looks_at_a_few_revoked_sessions_not_all_of_them() -> None:
    """A tenant signing in and out in a loop must not make each sign-out slower than the last
    (it runs on the event loop): one sign-out compares a handful of expiry times, not every one."""
    revoked = console_session.Revoked()
    later = time.time() + 3600
    for n in range(2000):
        revoked.add(f"nonce-{n}", Counted(later + n))
    Counted.compared = 0
    revoked.add("one-more", Counted(later + 5000))
    assert Counted.compared < 50, Counted.compared
    assert "nonce-0" in revoked and "one-more" in revoked and len(revoked) == 2001


def test_revoked_sessions_are_forgotten_when_expired_and_kept_within_a_limit() -> None:
    revoked = console_session.Revoked(limit=3)
    now = time.time()
    revoked.add("expired", now - 1)
    revoked.add("a", now + 100)
    assert "expired" not in revoked and len(revoked) == 1  # dropped at the next sign-out
    revoked.add("b", now + 300)
    revoked.add("c", now + 200)
    revoked.add("d", now + 400)  # over the limit: the one closest to expiry goes
    assert "a" not in revoked and {"b", "c", "d"} == {n for n in "abcd" if n in revoked}
