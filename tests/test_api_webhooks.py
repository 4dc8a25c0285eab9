"""/octo/webhooks over real HTTP on loopback, with a real SQLite file behind it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import store_key
from tests.conftest import AUTH_A, AUTH_B, TENANT_A, TENANT_B

PUBLIC_URL = "https://93.184.216.34/hooks/octo"


async def create(
    client: TestClient[Any, Any], body: dict[str, Any], auth: dict[str, str] = AUTH_A
) -> Any:
    response = await client.post("/octo/webhooks", json=body, headers=auth)
    assert response.status == 200, await response.text()
    return await response.json()


async def expect_error(response: Any, status: int, code: str, *mentions: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body: dict[str, Any] = await response.json()
    assert body["error"] == code
    for text in mentions:
        assert text in body["errorMessage"], body
    return body


async def test_create_returns_webhook_with_secret(client: TestClient[Any, Any]) -> None:
    webhook = await create(
        client, {"url": PUBLIC_URL, "event": "booking_update", "headers": {"X-Token": "t"}}
    )
    assert webhook["event"] == "booking_update"
    assert webhook["url"] == PUBLIC_URL
    assert webhook["headers"] == {"X-Token": "t"}
    assert webhook["retryOnError"] is True
    assert webhook["useContactLanguage"] is True
    assert webhook["capabilities"] == []
    assert webhook["active"] is True
    assert webhook["products"] == TENANT_A["products"]
    assert webhook["secret"].startswith("whsec_")
    assert len(base64.b64decode(webhook["secret"].removeprefix("whsec_"))) == 32


async def test_every_subscription_gets_its_own_secret(client: TestClient[Any, Any]) -> None:
    first = await create(client, {"url": PUBLIC_URL, "event": "booking_update"})
    second = await create(client, {"url": PUBLIC_URL, "event": "booking_update"})
    assert first["id"] != second["id"]
    assert first["secret"] != second["secret"]


async def test_list_get_patch_delete(client: TestClient[Any, Any]) -> None:
    webhook = await create(client, {"url": PUBLIC_URL, "event": "availability_update"})
    listed = await (await client.get("/octo/webhooks", headers=AUTH_A)).json()
    assert [w["id"] for w in listed] == [webhook["id"]]

    got = await client.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)
    assert got.status == 200
    assert (await got.json())["secret"] == webhook["secret"]

    patched = await client.patch(
        f"/octo/webhooks/{webhook['id']}",
        json={"retryOnError": False, "headers": {"X-A": "1"}, "event": "booking_update"},
        headers=AUTH_A,
    )
    assert patched.status == 200
    body = await patched.json()
    assert body["retryOnError"] is False
    assert body["headers"] == {"X-A": "1"}
    assert body["event"] == "booking_update"
    again = await (await client.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)).json()
    assert again["retryOnError"] is False

    deleted = await client.delete(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)
    assert deleted.status == 200
    assert (await deleted.json())["id"] == webhook["id"]
    missing = await client.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)
    await expect_error(missing, 404, "NOT_FOUND")
    assert await (await client.get("/octo/webhooks", headers=AUTH_A)).json() == []
    gone = await client.delete(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)
    await expect_error(gone, 404, "NOT_FOUND")


async def test_patch_active_toggles(client: TestClient[Any, Any]) -> None:
    webhook = await create(client, {"url": PUBLIC_URL, "event": "booking_update"})
    off = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"active": False}, headers=AUTH_A
    )
    assert (await off.json())["active"] is False
    on = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"active": True}, headers=AUTH_A
    )
    assert (await on.json())["active"] is True


async def test_tenants_see_only_their_own(client: TestClient[Any, Any]) -> None:
    mine = await create(client, {"url": PUBLIC_URL, "event": "booking_update"}, AUTH_A)
    theirs = await create(client, {"url": PUBLIC_URL, "event": "booking_update"}, AUTH_B)
    assert theirs["products"] == ["room-1", "room-2"]

    listed_b = await (await client.get("/octo/webhooks", headers=AUTH_B)).json()
    assert [w["id"] for w in listed_b] == [theirs["id"]]
    for method in ("GET", "DELETE"):
        response = await client.request(method, f"/octo/webhooks/{mine['id']}", headers=AUTH_B)
        await expect_error(response, 404, "NOT_FOUND")
    response = await client.patch(
        f"/octo/webhooks/{mine['id']}", json={"active": False}, headers=AUTH_B
    )
    await expect_error(response, 404, "NOT_FOUND")
    still = await (await client.get(f"/octo/webhooks/{mine['id']}", headers=AUTH_A)).json()
    assert still["active"] is True


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-000000"},
        {"Authorization": "Basic a2V5LWEtMDEyMzQ1Njc4OQ=="},
        {"Authorization": "Bearer"},
        {"Authorization": f"bearer {TENANT_A['key']}x"},
    ],
)
async def test_missing_or_wrong_key_is_401(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    for method, path in [
        ("GET", "/octo/webhooks"),
        ("POST", "/octo/webhooks"),
        ("GET", "/octo/webhooks/x"),
    ]:
        response = await client.request(method, path, headers=headers, json={})
        await expect_error(response, 401, "UNAUTHORIZED")


async def test_bearer_scheme_is_case_insensitive(client: TestClient[Any, Any]) -> None:
    response = await client.get(
        "/octo/webhooks", headers={"Authorization": f"bearer {TENANT_A['key']}"}
    )
    assert response.status == 200


async def test_octo_capabilities_echoed(client: TestClient[Any, Any]) -> None:
    response = await client.get(
        "/octo/webhooks", headers={**AUTH_A, "Octo-Capabilities": "octo/webhooks"}
    )
    assert response.headers["Octo-Capabilities"] == "octo/webhooks"
    unauthorized = await client.get(
        "/octo/webhooks", headers={"Octo-Capabilities": "octo/webhooks"}
    )
    assert unauthorized.headers["Octo-Capabilities"] == "octo/webhooks"
    # Every answer, whatever produced it: an unknown path, the API docs, a console asset.
    for path in ("/no/such/path", "/openapi.json", "/console/sign-in"):
        answer = await client.get(path, allow_redirects=False)
        assert answer.headers["Octo-Capabilities"] == "octo/webhooks", path


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"event": "booking_update"}, ["url", "field required"]),
        ({"url": PUBLIC_URL}, ["event", "field required"]),
        ({"url": PUBLIC_URL, "event": "booking_created"}, ["event"]),
        ({"url": 42, "event": "booking_update"}, ["url"]),
        ({"url": PUBLIC_URL, "event": "booking_update", "retryOnError": "yes"}, ["retryOnError"]),
        ({"url": PUBLIC_URL, "event": "booking_update", "headers": ["a"]}, ["headers"]),
        ({"url": PUBLIC_URL, "event": "booking_update", "headers": {"X": 1}}, ["headers"]),
        (
            {"url": PUBLIC_URL, "event": "booking_update", "colour": "red"},
            ["colour", "unknown field"],
        ),
        ({"url": "ftp://93.184.216.34/x", "event": "booking_update"}, ["url"]),
        ({"url": "/relative/path", "event": "booking_update"}, ["url"]),
        ({"url": "not a url", "event": "booking_update"}, ["url"]),
        ({"url": PUBLIC_URL, "event": "booking_update", "headers": {"X-A": "a\r\nB: c"}}, ["X-A"]),
        (
            {"url": PUBLIC_URL, "event": "booking_update", "headers": {"bad name": "v"}},
            ["bad name"],
        ),
        (
            {"url": PUBLIC_URL, "event": "booking_update", "headers": {"Webhook-Signature": "v"}},
            ["Webhook-Signature"],
        ),
    ],
)
async def test_bad_bodies_name_the_field(
    client: TestClient[Any, Any], body: dict[str, Any], mentions: list[str]
) -> None:
    response = await client.post("/octo/webhooks", json=body, headers=AUTH_A)
    await expect_error(response, 400, "BAD_REQUEST", *mentions)


@pytest.mark.parametrize(
    ("raw", "mention"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "empty"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'"text"', "JSON object"),
        (b"[" * 100_000, "nested"),  # json.loads recurses: RecursionError
        (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),  # int() refuses over 4300 digits
    ],
    ids=lambda value: value[:20] if isinstance(value, bytes) else value,
)
async def test_malformed_json_is_400(
    client: TestClient[Any, Any], raw: bytes, mention: str
) -> None:
    response = await client.post(
        "/octo/webhooks", data=raw, headers={**AUTH_A, "Content-Type": "application/json"}
    )
    await expect_error(response, 400, "BAD_REQUEST", mention)


async def test_patch_validates_too(client: TestClient[Any, Any]) -> None:
    webhook = await create(client, {"url": PUBLIC_URL, "event": "booking_update"})
    path = f"/octo/webhooks/{webhook['id']}"
    for body, mention in [
        ({"active": "no"}, "active"),
        ({"url": None}, "url"),
        ({"url": "http://127.0.0.1/x"}, "url"),
        ({"secret": "whsec_x"}, "secret"),
    ]:
        await expect_error(
            await client.patch(path, json=body, headers=AUTH_A), 400, "BAD_REQUEST", mention
        )


async def test_oversize_body_is_413(client: TestClient[Any, Any]) -> None:
    big = io.BytesIO(b'{"url": "' + b"a" * 2_000_000 + b'"}')
    response = await client.post(
        "/octo/webhooks", data=big, headers={**AUTH_A, "Content-Type": "application/json"}
    )
    await expect_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_url_password_masked_everywhere_but_creation(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = "https://alice:s3cr3t-pw@93.184.216.34/hook"
    webhook = await create(client, {"url": url, "event": "booking_update"})
    assert webhook["url"] == url
    masked = "https://alice:***@93.184.216.34/hook"
    got = await (await client.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)).json()
    assert got["url"] == masked
    listed = await (await client.get("/octo/webhooks", headers=AUTH_A)).json()
    assert listed[0]["url"] == masked
    patched = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"retryOnError": False}, headers=AUTH_A
    )
    assert (await patched.json())["url"] == masked
    deleted = await client.delete(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)
    assert (await deleted.json())["url"] == masked
    assert "s3cr3t-pw" not in caplog.text


async def test_a_masked_password_is_kept_only_for_the_same_scheme_user_and_host(
    client: TestClient[Any, Any],
) -> None:
    """PATCH with the URL as GET showed it keeps the stored password; the same *** with another
    scheme, user or host would send a password the caller never saw elsewhere: a 400."""
    url = "https://alice:s3cr3t-pw@93.184.216.34/hook"
    webhook = await create(client, {"url": url, "event": "booking_update"})
    path = f"/octo/webhooks/{webhook['id']}"
    for moved in (
        "https://alice:***@93.184.216.35/hook",
        "http://alice:***@93.184.216.34/hook",
        "https://bob:***@93.184.216.34/hook",
        "https://alice:***@93.184.216.34:8443/hook",
    ):
        refused = await client.patch(path, json={"url": moved}, headers=AUTH_A)
        await expect_error(refused, 400, "BAD_REQUEST", "url:", "give it again")
    kept = await client.patch(
        path, json={"url": "https://alice:***@93.184.216.34/other"}, headers=AUTH_A
    )
    assert kept.status == 200, await kept.text()
    stored = await client.app[store_key].get_subscription(str(TENANT_A["name"]), webhook["id"])
    assert stored is not None and stored.url == "https://alice:s3cr3t-pw@93.184.216.34/other"
    retyped = await client.patch(
        path, json={"url": "https://alice:new-pw@93.184.216.35/hook"}, headers=AUTH_A
    )
    assert retyped.status == 200


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/hook",
        "http://LOCALHOST:8080/hook",
        "http://api.localhost/hook",
        "http://127.0.0.1/hook",
        "http://127.1.2.3:9000/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.5/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/hook",
        "http://[fd00::1]/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://240.0.0.1/hook",
        "http://100.64.0.1/hook",
        "https://user:pw@127.0.0.1/hook",
    ],
)
async def test_private_targets_refused(client: TestClient[Any, Any], url: str) -> None:
    response = await client.post(
        "/octo/webhooks", json={"url": url, "event": "booking_update"}, headers=AUTH_A
    )
    await expect_error(response, 400, "BAD_REQUEST", "url")


async def test_private_targets_allowed_when_configured(
    aiohttp_client: Any, make_config: Any
) -> None:
    from gateway.app import create_app

    client = await aiohttp_client(create_app(make_config(delivery={"allow_private_targets": True})))
    webhook = await create(client, {"url": "http://127.0.0.1:9/hook", "event": "booking_update"})
    assert webhook["url"] == "http://127.0.0.1:9/hook"


async def test_unknown_route_and_method_answer_octo_errors(client: TestClient[Any, Any]) -> None:
    await expect_error(await client.get("/octo/nothing-here", headers=AUTH_A), 404, "NOT_FOUND")
    await expect_error(
        await client.put("/octo/webhooks", headers=AUTH_A), 405, "METHOD_NOT_ALLOWED"
    )
    await expect_error(await client.get("/nowhere"), 404, "NOT_FOUND")


# -- the cap on subscriptions per api key (issue 12, finding 3) -------------------------------


async def test_an_api_key_holds_at_most_max_subscriptions(
    aiohttp_client: Any, make_config: Any
) -> None:
    capped = {**TENANT_A, "max_subscriptions": 3}
    client = await aiohttp_client(create_app(make_config(api_keys=[capped, TENANT_B])))
    body = {"url": PUBLIC_URL, "event": "booking_update"}
    # At once, so two creations can't both see room for the last one.
    answers = [
        await r.json()
        for r in await asyncio.gather(
            *(client.post("/octo/webhooks", json=body, headers=AUTH_A) for _ in range(6))
        )
    ]
    created = [a for a in answers if "id" in a]
    refused = [a for a in answers if "id" not in a]
    assert len(created) == 3
    for answer in refused:
        assert answer["error"] == "BAD_REQUEST"
        assert "3 webhooks, its limit" in answer["errorMessage"]
        assert "max_subscriptions" in answer["errorMessage"]
    listed = await client.get("/octo/webhooks", headers=AUTH_A)
    assert len(await listed.json()) == 3

    # Another tenant has room of its own (the default, 100).
    await create(client, body, auth=AUTH_B)
    # A deleted subscription no longer counts.
    deleted = await client.delete(f"/octo/webhooks/{created[0]['id']}", headers=AUTH_A)
    assert deleted.status == 200
    await create(client, body)
    await expect_error(
        await client.post("/octo/webhooks", json=body, headers=AUTH_A),
        400,
        "BAD_REQUEST",
        "limit",
    )


def test_the_default_cap_is_100(make_config: Any) -> None:
    assert make_config().api_keys[0].max_subscriptions == 100


@pytest.mark.parametrize(
    ("headers", "mention"),
    [
        ({"X-Nul": "a\x00b"}, "control characters"),
        ({"X-Vt": "a\x0bb"}, "control characters"),
        ({"X-Del": "a\x7fb"}, "control characters"),
        ({"X-Lf": "a\nb"}, "line breaks"),
        ({"X-Cr": "a\rb"}, "line breaks"),
        ({"X-Big": "v" * 900_000}, "bytes in all"),
        ({f"X-H{n}": "v" for n in range(3000)}, "at most 50"),
        ({f"X-H{n}": "v" * 200 for n in range(45)}, "bytes in all"),
        ({"Content-Encoding": "gzip"}, "set by the gateway"),
        ({"webhook-version": "2"}, "set by the gateway"),
        ({"Transfer-Encoding": "chunked"}, "set by the gateway"),
        ({"X-Env\n": "prod"}, "not a valid HTTP header name"),
        ({"X Env": "prod"}, "not a valid HTTP header name"),
        ({"X-Env": "a", "x-env": "b"}, "given twice"),
        ({"X-Pair": "\ud800"}, "not valid Unicode"),
    ],
    ids=lambda value: str(value)[:30],
)
async def test_headers_that_can_never_be_delivered_are_refused(
    client: TestClient[Any, Any], headers: dict[str, str], mention: str
) -> None:
    body = {"url": PUBLIC_URL, "event": "booking_update", "headers": headers}
    response = await client.post(
        "/octo/webhooks",
        data=json.dumps(body),  # json escapes the lone surrogate, as a client would send it
        headers={**AUTH_A, "Content-Type": "application/json"},
    )
    await expect_error(response, 400, "BAD_REQUEST", mention)
    webhook = await create(client, {"url": PUBLIC_URL, "event": "booking_update"})
    patched = await client.patch(
        f"/octo/webhooks/{webhook['id']}",
        data=json.dumps({"headers": headers}),
        headers={**AUTH_A, "Content-Type": "application/json"},
    )
    await expect_error(patched, 400, "BAD_REQUEST", mention)


@pytest.mark.parametrize(
    "capabilities", [["c" * 201], ["octo/pricing"] * 51], ids=["a long one", "too many"]
)
async def test_capabilities_are_bounded(
    client: TestClient[Any, Any], capabilities: list[str]
) -> None:
    # Every delivery's body carries them: 50 of 20 kB each made a megabyte per delivery.
    body = {"url": PUBLIC_URL, "event": "booking_update", "capabilities": capabilities}
    response = await client.post("/octo/webhooks", json=body, headers=AUTH_A)
    await expect_error(response, 400, "BAD_REQUEST", "capabilities")
    webhook = await create(client, {"url": PUBLIC_URL, "event": "booking_update"})
    patched = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"capabilities": capabilities}, headers=AUTH_A
    )
    await expect_error(patched, 400, "BAD_REQUEST", "capabilities")
    ok = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"capabilities": ["c" * 200] * 50}, headers=AUTH_A
    )
    assert ok.status == 200, await ok.text()


async def test_headers_within_the_limits_are_kept(client: TestClient[Any, Any]) -> None:
    headers = {"X-Tab": "a\tb", "X-Utf8": "café €", f"X-{'n' * 60}": "v" * 2000}
    headers.update({f"X-H{n}": "v" for n in range(47)})
    webhook = await create(
        client, {"url": PUBLIC_URL, "event": "booking_update", "headers": headers}
    )
    assert webhook["headers"] == headers
