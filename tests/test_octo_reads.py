"""Reconciliation reads (GET /octo/bookings, /octo/bookings/{uuid}, /octo/availability) through a
running gateway: what they answer is what the subscribers were last sent, scoped per tenant.

Bookings come from Channex's samples through the fake Channex API (revision 1 mapped to tenant B's
product "room-1"; the Booking.com booking of revisions 2 and 3 is on another product) and from the
Beds24 version 2 sample.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.store.sqlite.reads import PRODUCT, RESELLER_REFERENCE, SLOT, SUPPLIER_REFERENCE, UUID
from tests.conftest import AUTH_A, AUTH_B
from tests.fake_pms import Gateways, Harness, booking_push, eventually, load_fixture
from tests.octo_schema import validate_octo
from tests.test_store import query_plan

# Both stores: the SQLite file and a PostgreSQL database.
pytestmark = pytest.mark.both_stores

ROOM_1 = "994d1375-dbbd-4072-8724-b2ab32ce781b"  # channex-booking-revision-1.json
BOOKING_1 = "cfa33f3b-bd32-4b90-8ef9-bde2bfe986cd"
BOOKING_COM = "3e029821-d446-45e9-8394-42d78a3aa1b1"  # channex-booking-revision-2/3.json
DOUBLE = "e2a15383-7843-4240-adda-736608d72eca"


@pytest.fixture
async def gw(gateways: Gateways) -> Harness:
    harness = await gateways.start(sources={"channex": {"product_map": {ROOM_1: "room-1"}}})
    harness.pms.add_revision("channex-booking-revision-1.json", "rev-1")
    harness.pms.add_revision("channex-booking-revision-2.json", "rev-2")
    harness.pms.add_revision(
        "channex-booking-revision-3.json", "rev-3", inserted_at="2020-11-13T08:00:00"
    )
    for revision in ("rev-1", "rev-2", "rev-3"):
        answer = await harness.push_ok("channex", booking_push(revision))
        await harness.wait_state(answer["id"], "processed")
    rows = [
        {"date": "2030-03-01", "room_type_id": ROOM_1, "availability": 2, "booked": 2},
        {"date": "2030-03-02", "room_type_id": ROOM_1, "availability": 0, "booked": 4},
        {"date": "2030-03-01", "room_type_id": "elsewhere", "availability": 7},
        {"date": "2030-03-01", "room_type_id": ROOM_1, "availability": 1, "booked": 3},
    ]
    await harness.push_ok("channex", {"event": "ari", "payload": rows})
    await eventually(lambda: len(harness.availability.availability()) == 3)
    await harness.settled()
    return harness


async def get(gw: Harness, path: str, auth: dict[str, str] = AUTH_A, **params: str) -> Any:
    response = await gw.client.get(path, params=params, headers=auth)
    body = await response.json()
    return response, body


def last_sent(gw: Harness) -> dict[str, dict[str, Any]]:
    sent: dict[str, dict[str, Any]] = {}
    for booking in gw.bookings.bookings():
        sent[booking["uuid"]] = booking
    return sent


async def test_a_booking_by_uuid_is_the_last_one_sent(gw: Harness) -> None:
    sent = last_sent(gw)
    assert len(sent) == 2
    for uuid, booking in sent.items():
        response, body = await get(gw, f"/octo/bookings/{uuid}")
        assert response.status == 200
        assert response.headers["Octo-Capabilities"] == "octo/webhooks"
        validate_octo("Booking", body)
        assert body == booking
    modified = next(b for b in sent.values() if b["supplierReference"] == BOOKING_COM)
    assert modified["contact"]["firstName"] == "New Customer Name"  # revision 3, not 2

    response, body = await get(gw, "/octo/bookings/00000000-0000-0000-0000-000000000000")
    assert response.status == 404
    assert body == {"error": "NOT_FOUND", "errorMessage": "booking not found"}


async def test_a_tenant_reads_only_its_products(gw: Harness) -> None:
    sent = last_sent(gw)
    mine = next(uuid for uuid, b in sent.items() if b["productId"] == "room-1")
    other = next(uuid for uuid, b in sent.items() if b["productId"] == DOUBLE)

    response, body = await get(gw, f"/octo/bookings/{mine}", AUTH_B)
    assert (response.status, body["uuid"]) == (200, mine)
    response, body = await get(gw, f"/octo/bookings/{other}", AUTH_B)
    assert (response.status, body["error"]) == (404, "NOT_FOUND")

    response, body = await get(gw, "/octo/bookings", AUTH_B)
    assert [b["uuid"] for b in body] == [mine]
    response, body = await get(gw, "/octo/bookings", AUTH_B, supplierReference=BOOKING_COM)
    assert body == []

    response, body = await get(
        gw,
        "/octo/availability",
        AUTH_B,
        productId="elsewhere",
        optionId="DEFAULT",
        localDateStart="2030-03-01",
        localDateEnd="2030-03-31",
    )
    assert (response.status, body) == (200, [])
    response, body = await get(
        gw,
        "/octo/availability",
        AUTH_B,
        productId="room-1",
        optionId="DEFAULT",
        localDateStart="2030-03-01",
        localDateEnd="2030-03-31",
    )
    assert [a["id"][:10] for a in body] == ["2030-03-01", "2030-03-02"]

    response = await gw.client.get("/octo/bookings")
    assert response.status == 401
    assert (await response.json())["error"] == "UNAUTHORIZED"


async def test_bookings_newest_first_and_filtered(gw: Harness) -> None:
    response, body = await get(gw, "/octo/bookings")
    assert response.status == 200
    assert "Link" not in response.headers
    for booking in body:
        validate_octo("Booking", booking)
    # The Booking.com booking was sent last (its modification).
    assert [b["supplierReference"] for b in body] == [BOOKING_COM, BOOKING_1]
    assert body == [last_sent(gw)[b["uuid"]] for b in body]

    _, by_supplier = await get(gw, "/octo/bookings", supplierReference=BOOKING_1)
    assert [b["supplierReference"] for b in by_supplier] == [BOOKING_1]
    _, by_reseller = await get(gw, "/octo/bookings", resellerReference="3333333333")
    assert [b["supplierReference"] for b in by_reseller] == [BOOKING_COM]
    _, none = await get(gw, "/octo/bookings", resellerReference="no-such-reference")
    assert none == []
    _, since_long_ago = await get(gw, "/octo/bookings", updatedSince="2000-01-01T00:00:00Z")
    assert len(since_long_ago) == 2
    _, since_later = await get(gw, "/octo/bookings", updatedSince="2999-01-01T00:00:00+02:00")
    assert since_later == []


async def test_pages_follow_the_link_header_newest_first(gw: Harness) -> None:
    item = load_fixture("beds24-v2-booking-1.json")[0]
    for number in range(5):
        push = copy.deepcopy(item)
        push["booking"].update(id=900 + number, modifiedTime=f"2026-02-15T1{number}:00:00Z")
        await gw.push_ok("beds24", push)
    await eventually(lambda: len(gw.bookings.bookings()) == 8)
    await gw.settled()
    _, everything = await get(gw, "/octo/bookings", limit="500")
    assert len(everything) == 7

    pages: list[list[str]] = []
    url: str | None = "/octo/bookings?limit=3"
    while url is not None:
        response = await gw.client.get(url, headers=AUTH_A)
        assert response.status == 200
        pages.append([b["uuid"] for b in await response.json()])
        link = response.headers.get("Link")
        if link is None:
            url = None
        else:
            assert link.endswith('>; rel="next"') and link.startswith("<")
            url = link[1 : -len('>; rel="next"')]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [uuid for page in pages for uuid in page] == [b["uuid"] for b in everything]
    assert [b["supplierReference"] for b in everything[:5]] == ["904", "903", "902", "901", "900"]


async def test_availability_is_the_last_sent_per_day(gw: Harness) -> None:
    response, body = await get(
        gw,
        "/octo/availability",
        productId="room-1",
        optionId="DEFAULT",
        localDateStart="2030-02-28",
        localDateEnd="2030-03-05",
    )
    assert response.status == 200
    for availability in body:
        validate_octo("Availability", availability)
    assert [(a["id"][:10], a["vacancies"], a["status"]) for a in body] == [
        ("2030-03-01", 1, "LIMITED"),  # the last of the push's two rows for the day
        ("2030-03-02", 0, "SOLD_OUT"),
    ]
    sent = {(b["productId"], b["availability"]["id"]): b for b in gw.availability.bodies()}
    assert body == [sent[("room-1", a["id"])]["availability"] for a in body]

    _, one_day = await get(
        gw,
        "/octo/availability",
        productId="room-1",
        optionId="DEFAULT",
        localDateStart="2030-03-02",
        localDateEnd="2030-03-02",
    )
    assert [a["id"][:10] for a in one_day] == ["2030-03-02"]
    _, other_option = await get(
        gw,
        "/octo/availability",
        productId="room-1",
        optionId="flexible",
        localDateStart="2030-03-01",
        localDateEnd="2030-03-02",
    )
    assert other_option == []


AVAILABILITY = {
    "productId": "room-1",
    "optionId": "DEFAULT",
    "localDateStart": "2030-03-01",
    "localDateEnd": "2030-03-02",
}
NOT_A_CURSOR = [
    "garbage!",
    base64.urlsafe_b64encode(b'{"a": 1}').decode(),
    base64.urlsafe_b64encode(b'[1e999, "k"]').decode(),
    base64.urlsafe_b64encode(b"[1" + b"0" * 400 + b', "k"]').decode(),
    base64.urlsafe_b64encode(b"[true, 1]").decode(),
    "é",
]


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/octo/bookings", {"limit": "0"}, "limit"),
        ("/octo/bookings", {"limit": "501"}, "limit"),
        ("/octo/bookings", {"limit": "ten"}, "limit"),
        ("/octo/bookings", {"limit": "²"}, "limit"),
        ("/octo/bookings", {"limit": "9" * 5000}, "limit"),
        ("/octo/bookings", {"updatedSince": "yesterday"}, "updatedSince"),
        ("/octo/bookings", {"updatedSince": "2026-11-24"}, "updatedSince"),
        ("/octo/bookings", {"updatedSince": "2026-11-24T00:00:00"}, "updatedSince"),
        ("/octo/bookings", {"updatedSince": "2026-13-45T00:00:00Z"}, "updatedSince"),
        ("/octo/bookings", {"updatedSince": "\uff12026-11-24T00:00:00Z"}, "updatedSince"),
        *(("/octo/bookings", {"cursor": cursor}, "cursor") for cursor in NOT_A_CURSOR),
        ("/octo/availability", {**AVAILABILITY, "productId": ""}, "productId"),
        (
            "/octo/availability",
            {k: v for k, v in AVAILABILITY.items() if k != "optionId"},
            "optionId",
        ),
        ("/octo/availability", {**AVAILABILITY, "localDateStart": "01/03/2030"}, "localDateStart"),
        ("/octo/availability", {**AVAILABILITY, "localDateEnd": "2030-02-30"}, "localDateEnd"),
        ("/octo/availability", {**AVAILABILITY, "localDateEnd": "2030-02-01"}, "localDateEnd"),
        ("/octo/availability", {**AVAILABILITY, "localDateEnd": "2031-03-02"}, "localDateEnd"),
        ("/octo/availability", {**AVAILABILITY, "localDateStart": "20300301"}, "localDateStart"),
    ],
)
async def test_bad_parameters_answer_400_naming_the_parameter(
    gateways: Gateways, path: str, params: dict[str, str], named: str
) -> None:
    gw = await gateways.start(subscribe=False)
    response = await gw.client.get(path, params=params, headers=AUTH_A)
    body = await response.json()
    assert response.status == 400, body
    assert body["error"] == "BAD_REQUEST"
    assert body["errorMessage"].startswith(f"{named}: ")


async def test_reads_use_the_indexes(tmp_path: Path) -> None:
    plans = {
        expression: await query_plan(
            tmp_path / "plan.db",
            f"select key from booking_state where {expression} = :value",
            {"value": "x"},
        )
        for expression in (UUID, SUPPLIER_REFERENCE, RESELLER_REFERENCE)
    }
    for expression, plan in plans.items():
        assert any("USING INDEX" in step for step in plan), (expression, plan)
    newest = await query_plan(
        tmp_path / "plan.db",
        f"select key from booking_state where (updated_at, key) < (:u, :k) and {PRODUCT} = :p"
        " order by updated_at desc, key desc limit 50",
        {"u": 1.0, "k": "k", "p": "p"},
    )
    assert not any("TEMP B-TREE" in step for step in newest), newest
    slots = await query_plan(
        tmp_path / "plan.db",
        f"select availability from availability_state where {SLOT} between :a and :b",
        {"a": "p|o|2030-01-01", "b": "p|o|2030-12-31"},
    )
    assert any("availability_state_slot" in step for step in slots), slots


async def test_a_walk_through_the_pages_misses_no_booking_updated_or_added_meanwhile(
    gw: Harness,
) -> None:
    """A reseller re-syncing page by page while bookings change: one it has not reached yet that
    changes moves ahead of its cursor, one booked meanwhile is ahead of it too. Both still come
    (after the pages the walk started with), each version at most once."""
    item = load_fixture("beds24-v2-booking-1.json")[0]

    async def beds24(number: int, modified: str) -> None:
        push = copy.deepcopy(item)
        push["booking"].update(id=900 + number, modifiedTime=modified, comments=modified)
        answer = await gw.push_ok("beds24", push)
        await gw.wait_state(answer["id"], "processed")
        # Processed means its messages are stored, not yet received: the comparison below is
        # with what the subscriber got.
        await eventually(
            lambda: any(
                b["supplierReference"] == str(900 + number) and b["notes"] == modified
                for b in gw.bookings.bookings()
            )
        )

    for number in range(4):
        await beds24(number, f"2026-02-15T1{number}:00:00Z")
    _, everything = await get(gw, "/octo/bookings", limit="500")
    assert len(everything) == 6

    seen: list[dict[str, Any]] = []
    url: str | None = "/octo/bookings?limit=2"
    while url is not None:
        response = await gw.client.get(url, headers=AUTH_A)
        assert response.status == 200
        seen += await response.json()
        if len(seen) == 2:  # after the first page: the oldest booking changes, one is added
            await beds24(0, "2026-02-15T20:00:00Z")
            await beds24(9, "2026-02-15T21:00:00Z")
        link = response.headers.get("Link")
        url = None if link is None else link[1 : -len('>; rel="next"')]

    versions = [(b["uuid"], b["utcUpdatedAt"]) for b in seen]
    assert len(versions) == len(set(versions))  # no version twice
    latest = {b["uuid"]: b for b in seen}  # the last seen of each booking
    assert len(latest) == 7
    assert latest == {uuid: b for uuid, b in last_sent(gw).items()}
    assert [b["notes"] for b in seen if b["supplierReference"] == "900"][-1] == (
        "2026-02-15T20:00:00Z"
    )
