"""Malformed and hostile pushes: never a 500; a 400 names the problem and the id of the failed push,
which stays GET-able and replayable (CONTRACT §3, §4 admin)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import random
from typing import Any

import brotli
import pytest

from tests.conftest import AUTH_ADMIN
from tests.fake_pms import BEDS24_INGEST_TOKEN, CHANNEX_TOKEN, Gateways, Harness, eventually
from tests.octo_schema import load_fixture
from tests.tenants import TENANT_A

DEEP_LIST = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
HUGE_ZEROS = b"[" + b"0," * 99_999 + b"0]"  # 100k items, about 200 kB

# (source, method, query, body, what the 400 must mention)
HOSTILE: list[tuple[str, str, dict[str, str], bytes, str]] = [
    ("channex", "POST", {}, b'{"event": ', "not valid JSON"),
    ("channex", "POST", {}, b'{"event": 5}', "event"),
    ("channex", "POST", {}, b'{"payload": {}}', "event"),
    ("channex", "POST", {}, b'{"event": "booking", "payload": "x"}', "payload"),
    ("channex", "POST", {}, b'{"event": "booking_new", "payload": [1]}', "payload"),
    ("channex", "POST", {}, b'{"event": "ari", "payload": {"rows": 1}}', "payload"),
    ("channex", "POST", {}, b'{"event": "ari", "payload": "x"}', "payload"),
    (
        "channex",
        "POST",
        {},
        b'{"event": "booking", "payload": {"revision_id": "../../x"}}',
        "revision_id",
    ),
    (
        "channex",
        "POST",
        {},
        b'{"event": "booking", "payload": {"revision_id": ["a"]}}',
        "revision_id",
    ),
    (
        "channex",
        "POST",
        {},
        b'{"event": "booking", "payload": {"booking_revision_id": 7}}',
        "booking_revision_id",
    ),
    ("channex", "POST", {}, HUGE_ZEROS, "JSON object"),
    ("channex", "POST", {}, DEEP_LIST, "nested"),
    ("channex", "POST", {}, DEEP_OBJECT, "nested"),
    ("channex", "POST", {}, b'{"event": "message", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "nested"),
    ("channex", "POST", {}, b'{"event": "\xff\xfe"}', "UTF-8"),
    ("channex", "POST", {}, b"", "empty"),
    ("channex", "POST", {}, b" \n\t ", "empty"),
    ("channex", "POST", {}, b'{"event": "ari", "payload": [{"availability": NaN}]}', "NaN"),
    ("channex", "POST", {}, b'{"event": "message", "n": ' + b"9" * 5000 + b"}", "too long"),
    # json accepts a lone surrogate escape and numbers past a double; the store's orjson does not
    ("channex", "POST", {}, b'{"event": "message", "x": "\\ud800"}', "surrogate"),
    ("channex", "POST", {}, b'{"event": "message", "x": "\\udc00 \\ud800"}', "surrogate"),
    ("beds24", "POST", {}, b'{"booking": {"id": 1, "firstName": "\\ud83d"}}', "surrogate"),
    ("channex", "POST", {}, b'{"event": "message", "x": 1e400}', "out of range"),
    ("channex", "POST", {}, b"[" * 100_000, "nested"),
    ("beds24", "POST", {}, b"[" * 100_000, "nested"),
    ("channex", "POST", {}, b'"just a string"', "JSON object"),
    ("channex", "POST", {}, b"null", "JSON object"),
    ("channex", "GET", {}, b"", "POST"),
    ("beds24", "POST", {}, b"[]", "empty array"),
    ("beds24", "POST", {}, b"{}", "booking"),
    ("beds24", "POST", {}, b'{"booking": "x"}', "booking"),
    ("beds24", "POST", {}, b'[{"booking": {"id": true}}]', "booking.id"),
    ("beds24", "POST", {}, b'[{"booking": {"id": 1.5}}]', "booking.id"),
    ("beds24", "POST", {}, b'[{"booking": {"id": 1}}, 7]', "[1].booking"),
    ("beds24", "POST", {}, b"[" + b"1," * 99_999 + b"1]", "[0].booking"),
    ("beds24", "POST", {}, DEEP_LIST, "nested"),
    ("beds24", "POST", {}, b'{"action": "DELETE_ROOM"}', "action"),
    ("beds24", "POST", {}, b'{"action": "SYNC_ROOM", "roomId": "../1"}', "roomId"),
    ("beds24", "POST", {}, b'{"action": "SYNC_ROOM", "roomId": ["1"]}', "roomId"),
    ("beds24", "POST", {}, b'{"action": "SYNC_ROOM"}', "roomId"),
    ("beds24", "POST", {}, b"not json at all", "not valid JSON"),
    ("beds24", "GET", {}, b"", "bookid"),
    ("beds24", "GET", {"bookid": "abc"}, b"", "bookid"),
    ("beds24", "GET", {"bookid": "\u00b2"}, b"", "bookid"),
    ("beds24", "GET", {"bookid": "1" * 5000}, b"", "bookid"),
    ("beds24", "GET", {"bookid": "-1"}, b"", "bookid"),
    ("beds24", "GET", {"bookid": "12", "status": "weird"}, b"", "status"),
]


@pytest.fixture
async def gw(gateways: Gateways) -> Harness:
    return await gateways.start(subscribe=False)


def no_unhandled_errors(caplog: pytest.LogCaptureFixture) -> None:
    crashes = [
        r.getMessage()
        for r in caplog.records
        if r.name == "gateway.web.errors" or "failed on push" in r.getMessage()
    ]
    assert crashes == []


async def send(gw: Harness, source: str, method: str, query: dict[str, str], body: bytes) -> Any:
    token = CHANNEX_TOKEN if source == "channex" else BEDS24_INGEST_TOKEN
    return await gw.client.request(
        method,
        f"/ingest/{source}",
        params=query,
        data=io.BytesIO(body) if body else None,
        headers={"X-Gateway-Token": token, "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    ("source", "method", "query", "body", "mention"),
    HOSTILE,
    ids=[f"{c[0]}-{i}-{c[4]}" for i, c in enumerate(HOSTILE)],
)
async def test_hostile_push_is_a_400_with_a_replayable_failed_push(
    gw: Harness,
    caplog: pytest.LogCaptureFixture,
    source: str,
    method: str,
    query: dict[str, str],
    body: bytes,
    mention: str,
) -> None:
    response = await send(gw, source, method, query, body)
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert answer["error"] == "BAD_REQUEST"
    assert mention in answer["errorMessage"]
    assert answer["id"].startswith("psh_")

    push = await gw.admin_push(answer["id"])
    assert push["state"] == "failed"
    assert mention in push["error"]
    assert push["source"] == source

    replay = await gw.client.post(f"/admin/pushes/{answer['id']}/replay", headers=AUTH_ADMIN)
    assert replay.status == 200
    assert (await replay.json())["state"] == "accepted"

    async def failed_again() -> dict[str, Any] | None:
        again = await gw.admin_push(answer["id"])
        return again if again["state"] == "failed" and again["attempts"] == 1 else None

    again = await eventually(failed_again)
    assert mention in again["error"]
    assert gw.events() == 0
    assert gw.pms.requests == []
    no_unhandled_errors(caplog)


async def test_identical_broken_pushes_are_kept_once(gw: Harness) -> None:
    first = await (await send(gw, "channex", "POST", {}, b"{oops")).json()
    second = await (await send(gw, "channex", "POST", {}, b"{oops")).json()
    assert first["id"] == second["id"]
    assert gw.count("select count(*) from pushes") == 1


async def test_oversize_body_is_a_413_and_nothing_is_kept(gateways: Gateways) -> None:
    gw = await gateways.start(subscribe=False, server={"max_body_bytes": 65_536})
    for source in ("channex", "beds24"):
        response = await send(gw, source, "POST", {}, b"[" + b"0," * 40_000 + b"0]")
        assert response.status == 413
        body = await response.json()
        assert body["error"] == "PAYLOAD_TOO_LARGE"
        assert "65536" in body["errorMessage"]
    # Just under the limit is fine (and parsed).
    response = await send(gw, "channex", "POST", {}, b"[" + b"0," * 30_000 + b"0]")
    assert response.status == 400
    assert gw.count("select count(*) from pushes") == 1


async def test_compressed_bodies(gw: Harness, caplog: pytest.LogCaptureFixture) -> None:
    headers = {"X-Gateway-Token": CHANNEX_TOKEN, "Connection": "close"}
    doc = load_fixture("channex-message-1.json")
    response = await gw.client.post(
        "/ingest/channex",
        data=gzip.compress(json.dumps(doc).encode()),
        headers={**headers, "Content-Encoding": "gzip"},
    )
    assert response.status == 200, await response.text()

    bomb = gzip.compress(b"[" + b"0," * 3_000_000 + b"0]")  # 6 MB once inflated
    response = await gw.client.post(
        "/ingest/channex", data=bomb, headers={**headers, "Content-Encoding": "gzip"}
    )
    assert response.status == 413

    response = await gw.client.post(
        "/ingest/channex", data=b"not gzip", headers={**headers, "Content-Encoding": "gzip"}
    )
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert "could not be read" in answer["errorMessage"]
    push = await gw.admin_push(answer["id"])
    assert push["state"] == "failed"
    assert not any(r.name == "gateway.web.errors" for r in caplog.records)


async def test_brotli_bodies(gw: Harness) -> None:
    headers = {"X-Gateway-Token": CHANNEX_TOKEN, "Connection": "close", "Content-Encoding": "br"}
    doc = load_fixture("channex-message-1.json")
    response = await gw.client.post(
        "/ingest/channex", data=brotli.compress(json.dumps(doc).encode()), headers=headers
    )
    assert response.status == 200, await response.text()
    push = await gw.admin_push((await response.json())["id"])
    assert push["payload"]["event"] == doc["event"]

    bomb = brotli.compress(b"[" + b"0," * 3_000_000 + b"0]")  # 6 MB once inflated
    response = await gw.client.post("/ingest/channex", data=bomb, headers=headers)
    assert response.status == 413

    response = await gw.client.post("/ingest/channex", data=b"not brotli", headers=headers)
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert "could not be read" in answer["errorMessage"]
    assert (await gw.admin_push(answer["id"]))["state"] == "failed"


async def test_pushes_that_fail_in_processing_are_kept_failed(gw: Harness) -> None:
    cases = [
        ({"event": "ari", "payload": [{"availability": 1, "date": "2030-01-01"}]}, "room_type_id"),
        (
            {
                "event": "ari",
                "payload": [{"availability": "x", "room_type_id": "r", "date": "2030-01-01"}],
            },
            "availability",
        ),
        (
            {"event": "ari", "payload": [{"availability": 1, "room_type_id": "r", "date": "soon"}]},
            "date",
        ),
        (
            {
                "event": "ari",
                "payload": [
                    {
                        "availability": 1,
                        "room_type_id": "r",
                        "date_from": "2020-01-01",
                        "date_to": "2040-01-01",
                    }
                ],
            },
            "days",
        ),
        ({"event": "booking", "payload": {"revision_id": "no-such-revision"}}, "404"),
    ]
    for doc, mention in cases:
        answer = await gw.push_ok("channex", doc)
        push = await gw.wait_state(answer["id"], "failed")
        assert mention in push["error"], push
        replay = await gw.client.post(f"/admin/pushes/{answer['id']}/replay", headers=AUTH_ADMIN)
        assert replay.status == 200
        await eventually(
            lambda: gw.count("select count(*) from pushes where state = 'accepted'") == 0
        )
        assert (await gw.admin_push(answer["id"]))["state"] == "failed"
    assert gw.events() == 0


async def test_large_arrays_within_the_limit_are_processed(gw: Harness) -> None:
    rows: list[dict[str, Any]] = [{}] * 100_000  # "{}," is 3 bytes: 300 kB
    answer = await gw.push_ok("channex", {"event": "ari", "payload": rows})
    push = await gw.wait_state(answer["id"], "processed")
    assert "100000 row" in push["note"]
    assert gw.events() == 0

    days = [f"2031-{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, 29)]
    rows = [
        {"room_type_id": f"r{n}", "date": day, "availability": n % 4}
        for n in range(5)
        for day in days
    ]
    answer = await gw.push_ok("channex", {"event": "ari", "payload": rows})
    await gw.wait_state(answer["id"], "processed", timeout=30)
    assert gw.events("availability_update") == len(rows)


def mutations(doc: Any, rng: random.Random, count: int) -> list[bytes]:
    raw = json.dumps(doc).encode()
    out: list[bytes] = []
    for _ in range(count):
        choice = rng.randrange(4)
        if choice == 0:
            out.append(raw[: rng.randrange(len(raw))])
        elif choice == 1:
            position = rng.randrange(len(raw))
            out.append(raw[:position] + bytes([rng.randrange(256)]) + raw[position + 1 :])
        elif choice == 2:
            out.append(json.dumps(replace_random_value(doc, rng)).encode())
        else:
            position = rng.randrange(len(raw))
            out.append(
                raw[:position] + rng.choice([b"[", b"{", b'"', b",", b"null"]) + raw[position:]
            )
    return out


def replace_random_value(doc: Any, rng: random.Random) -> Any:
    """A copy of ``doc`` with one value somewhere replaced by something of another type."""
    copy = json.loads(json.dumps(doc))
    containers: list[Any] = []
    stack = [copy]
    while stack:
        item = stack.pop()
        if isinstance(item, (dict, list)) and item:
            containers.append(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    target = rng.choice(containers)
    key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
    target[key] = rng.choice([None, True, -1, 10**30, 1.5, "", "x" * 300, [], {}, [None], {"a": 1}])
    return copy


async def test_mutated_vendor_samples_never_crash_the_gateway(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(20240501)
    samples = {
        "channex": [
            "channex-booking-1.json",
            "channex-booking-2.json",
            "channex-non-acked-booking-1.json",
            "channex-ari-1.json",
            "channex-ari-2.json",
            "channex-message-1.json",
        ],
        "beds24": ["beds24-v2-booking-1.json", "beds24-inventory-1.json"],
    }
    gw.pms.add_revision(
        "channex-booking-revision-1.json",
        load_fixture("channex-booking-1.json")["payload"]["revision_id"],
    )
    statuses: dict[int, int] = {}
    for source, names in samples.items():
        for name in names:
            for body in mutations(load_fixture(name), rng, 25):
                response = await send(gw, source, "POST", {}, body)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                assert response.status in (200, 400), (name, body[:300], await response.text())
                if response.status == 400:
                    assert (await response.json())["id"]
    assert set(statuses) == {200, 400}
    # Whatever was accepted is processed or failed with a named reason, never a plugin crash.
    await eventually(
        lambda: gw.count("select count(*) from pushes where state = 'accepted'") == 0, timeout=30
    )
    no_unhandled_errors(caplog)


async def test_absurd_guest_counts_fail_the_push_instead_of_exhausting_memory(gw: Harness) -> None:
    item = load_fixture("beds24-v2-booking-1.json")[0]
    item["booking"]["numAdult"] = 10**8  # one unit item per guest would need gigabytes
    answer = await gw.push_ok("beds24", item)
    push = await gw.wait_state(answer["id"], "failed")
    assert "guests" in push["error"]

    rooms = load_fixture("channex-booking-revision-1.json")["data"]["attributes"]["rooms"]
    rooms[0]["occupancy"]["children"] = "100000000"
    gw.pms.add_revision("channex-booking-revision-1.json", "rev-crowd", rooms=rooms)
    answer = await gw.push_ok(
        "channex", {"event": "booking", "payload": {"revision_id": "rev-crowd"}}
    )
    push = await gw.wait_state(answer["id"], "failed")
    assert "guests" in push["error"]
    assert gw.events() == 0


async def test_a_rejected_body_is_kept_without_card_data(gw: Harness) -> None:
    card = "4111111111111111"
    doc = {"event": 5, "payload": {"guarantee": {"card_number": card, "cvv": "737"}, "x": 1}}
    response = await send(gw, "channex", "POST", {}, json.dumps(doc).encode())
    assert response.status == 400
    push = await gw.admin_push((await response.json())["id"])
    kept = json.loads(base64.b64decode(push["payload"]["body"]))
    assert kept == {"event": 5, "payload": {"x": 1}}

    # Not JSON, but card-like: not kept at all.
    response = await send(gw, "beds24", "POST", {}, f"cardNumber={card}&cvv=737".encode())
    assert response.status == 400
    push = await gw.admin_push((await response.json())["id"])
    assert push["payload"]["body"] is None
    raw = b"".join(
        path.read_bytes()
        for path in gw.db_path.parent.iterdir()
        if path.name.startswith(gw.db_path.name)
    )
    assert card.encode() not in raw
    assert base64.b64encode(card.encode())[:16] not in raw


async def test_a_byte_order_mark_is_accepted(gw: Harness) -> None:
    body = b"\xef\xbb\xbf" + json.dumps(load_fixture("channex-message-1.json")).encode()
    response = await send(gw, "channex", "POST", {}, body)
    assert response.status == 200, await response.text()


async def test_an_ari_push_naming_millions_of_days_fails_instead_of_expanding(gw: Harness) -> None:
    row = {"availability": 1, "date_from": "2030-01-01", "date_to": "2032-12-31"}
    rows = [{**row, "room_type_id": f"r{n}"} for n in range(300)]  # 300 x 1096 days
    answer = await gw.push_ok("channex", {"event": "ari", "payload": rows})
    push = await gw.wait_state(answer["id"], "failed")
    assert "200000" in push["error"]
    assert gw.events() == 0


def test_nesting_is_refused_past_the_limit_and_only_past_it() -> None:
    from gateway.sources.pms import MAX_DEPTH, PushRejected, parse_json

    def nested(levels: int) -> bytes:
        return b'{"a":' * (levels - 1) + b"[1]" + b"}" * (levels - 1)

    assert parse_json(nested(MAX_DEPTH)) is not None
    with pytest.raises(PushRejected, match="nested more than"):
        parse_json(nested(MAX_DEPTH + 1))
    # The bracket count only decides whether the values are walked: brackets inside strings make
    # a shallow body walked, never refused; a deep one with a BOM (the slow path) is refused too.
    shallow = json.dumps({"notes": "[{" * 100, "rooms": [{"id": 1}]}).encode()
    assert parse_json(shallow)["rooms"] == [{"id": 1}]
    with pytest.raises(PushRejected, match="nested more than"):
        parse_json("\ufeff".encode() + nested(MAX_DEPTH + 1))


async def raw_request(gw: Harness, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes no HTTP client library would (header values that are not UTF-8); the status
    and the JSON body of the answer."""
    server = gw.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize(
    ("what", "headers", "status"),
    [
        ("a wrong ingest token", b"X-Gateway-Token: \xff" + CHANNEX_TOKEN.encode(), 401),
        ("a wrong api key", b"Authorization: Bearer \xff" + TENANT_A["key"].encode(), 401),
    ],
)
async def test_header_bytes_that_are_not_utf8_answer_401_not_500(
    gw: Harness, caplog: pytest.LogCaptureFixture, what: str, headers: bytes, status: int
) -> None:
    path = b"/octo/webhooks" if b"Authorization" in headers else b"/ingest/channex"
    request = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    request += headers + b"\r\nContent-Length: 2\r\n\r\n{}"
    code, answer = await raw_request(gw, request)
    assert (code, answer["error"]) == (status, "UNAUTHORIZED"), (what, answer)
    no_unhandled_errors(caplog)


async def test_a_content_type_that_is_not_utf8_keeps_the_rejected_push(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    request = (
        b"POST /ingest/beds24 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-Gateway-Token: " + BEDS24_INGEST_TOKEN.encode() + b"\r\n"
        b"Content-Type: application/json\xff\r\nContent-Length: 3\r\n\r\n{x}"
    )
    code, answer = await raw_request(gw, request)
    assert code == 400, answer
    assert "not valid JSON" in answer["errorMessage"]
    push = await gw.admin_push(answer["id"])
    assert push["state"] == "failed"
    no_unhandled_errors(caplog)
