"""Every push kind of CONTRACT §3, end to end: push -> gateway -> fake PMS API -> OCTO webhook.

The gateway runs with its workers; the fake Channex and Beds24 APIs and the subscriber receivers
are real HTTP servers on loopback; the store is a real SQLite file in tmp_path.
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import AUTH_B
from tests.fake_pms import (
    BEDS24_INGEST_TOKEN,
    BEDS24_TOKEN,
    CHANNEX_KEY,
    Gateways,
    Harness,
    beds24_booking,
    eventually,
)
from tests.octo_schema import load_fixture, validate_octo

REV_1 = "03dd7198-c5b7-493c-a889-74d0c2211de7"  # channex-booking-revision-1.json
BOOKING_1 = "cfa33f3b-bd32-4b90-8ef9-bde2bfe986cd"
ROOM_1 = "994d1375-dbbd-4072-8724-b2ab32ce781b"
ARI_ROOM = "27e24739-239c-4619-9c30-0dc390f5d7ac"  # channex-ari-1.json
ARI_RATE = "04c607e4-644d-45ea-ab1a-da920ee36e50"
BEDS24_ID = 82279106  # beds24-booking-get-1.json / beds24-v2-booking-1.json


# Both stores: the SQLite file and a PostgreSQL database.
pytestmark = pytest.mark.both_stores


def channex_push(fixture: str, **payload: Any) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(load_fixture(fixture))
    doc.setdefault("payload", {}).update(payload)
    return doc


async def one_booking(gw: Harness, count: int = 1) -> list[dict[str, Any]]:
    bookings: list[dict[str, Any]] = await eventually(
        lambda: len(gw.bookings.bookings()) >= count and gw.bookings.bookings()
    )
    for booking in bookings:
        validate_octo("Booking", booking)
    return bookings


# -- Channex ---------------------------------------------------------------------------------------


async def test_channex_booking_is_read_translated_delivered_then_acknowledged(gw: Harness) -> None:
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    answer = await gw.push_ok(
        "channex", channex_push("channex-booking-1.json", revision_id=REV_1, booking_id=BOOKING_1)
    )
    assert answer["duplicate"] is False
    assert answer["id"]

    [booking] = await one_booking(gw)
    [body] = gw.bookings.bodies("booking_update")
    assert body["diff"] == []
    assert body["webhook"]["event"] == "booking_update"
    assert booking["supplierReference"] == BOOKING_1
    assert booking["resellerReference"] == "9996013801"
    assert booking["productId"] == ROOM_1
    assert booking["status"] == "CONFIRMED"
    assert booking["availability"]["localDateTimeStart"].startswith("2019-04-26T00:00:00")

    [read] = gw.pms.calls(f"/booking_revisions/{REV_1}")
    assert read.headers["user-api-key"] == CHANNEX_KEY
    await eventually(lambda: gw.pms.acked == [REV_1])
    [ack] = gw.pms.calls(f"/booking_revisions/{REV_1}/ack", "POST")
    assert ack.headers["user-api-key"] == CHANNEX_KEY
    # The ack came only once the event was stored.
    assert gw.pms.events_at_ack[REV_1] == 1

    push = await gw.wait_state(answer["id"], "processed")
    assert push["error"] is None
    # The revision's card (guarantee) is never stored.
    raw = gw.stored_bytes()
    for secret in (b"411111******1111", b"cardholder_name", b"guarantee", b"10/2020"):
        assert secret not in raw


async def test_channex_booking_new_without_payload_reads_the_feed(gw: Harness) -> None:
    doc = load_fixture("channex-booking-2.json")
    property_id = doc["property_id"]
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1, property_id=property_id)
    gw.pms.add_revision("channex-booking-revision-5.json", "rev-airbnb-1", property_id=property_id)
    gw.pms.add_revision(
        "channex-booking-revision-7.json", "rev-other-property", property_id="someone-else"
    )
    assert "payload" not in doc
    answer = await gw.push_ok("channex", doc)

    bookings = await one_booking(gw, 2)
    assert len(bookings) == 2
    [feed] = gw.pms.calls("/booking_revisions/feed")
    assert feed.query["filter[property_id]"] == property_id
    await eventually(lambda: sorted(gw.pms.acked) == sorted([REV_1, "rev-airbnb-1"]))
    push = await gw.wait_state(answer["id"], "processed")
    assert "2 revision" in push["note"]


async def test_channex_feed_is_read_page_by_page(gw: Harness) -> None:
    doc = load_fixture("channex-booking-2.json")
    property_id = doc["property_id"]
    ids = [f"rev-{n:02d}" for n in range(25)]
    for revision_id in ids:
        gw.pms.add_revision("channex-booking-revision-1.json", revision_id, property_id=property_id)
    answer = await gw.push_ok("channex", doc)

    await eventually(lambda: sorted(gw.pms.acked) == ids)
    pages = [call.query["pagination[page]"] for call in gw.pms.calls("/booking_revisions/feed")]
    assert pages == ["1", "2", "3"]  # the fake answers 10 at a time
    push = await gw.wait_state(answer["id"], "processed")
    assert "25 revision" in push["note"]
    # The booking goes out (once: the revisions are one booking with nothing new after the first)
    # before the test ends, so no delivery is cut off by the teardown: twice in today's full runs
    # (04:01, 11:56) an unclosed socket was collected in the next test's setup, right after this one.
    assert len(await one_booking(gw)) == 1


async def test_channex_legacy_envelope(gw: Harness) -> None:
    doc = load_fixture("channex-booking-3.json")
    assert "timestamp" not in doc and "user_id" not in doc
    revision_id = doc["payload"]["revision_id"]
    gw.pms.add_revision("channex-booking-revision-2.json", revision_id)
    await gw.push_ok("channex", doc)
    [booking] = await one_booking(gw)
    assert booking["supplierReference"] == "3e029821-d446-45e9-8394-42d78a3aa1b1"
    await eventually(lambda: gw.pms.acked == [revision_id])


@pytest.mark.parametrize(
    "fixture",
    [
        "channex-booking-unmapped-room-1.json",
        "channex-booking-unmapped-rate-1.json",
        "channex-non-acked-booking-1.json",
    ],
)
async def test_channex_events_naming_booking_revision_id(gw: Harness, fixture: str) -> None:
    doc = load_fixture(fixture)
    revision_id = doc["payload"]["booking_revision_id"]
    assert "revision_id" not in doc["payload"]
    rooms = copy.deepcopy(
        load_fixture("channex-booking-revision-1.json")["data"]["attributes"]["rooms"]
    )
    if "unmapped" in fixture:
        rooms[0]["room_type_id"] = None
        rooms[0]["rate_plan_id"] = None
    gw.pms.add_revision("channex-booking-revision-1.json", revision_id, rooms=rooms)
    answer = await gw.push_ok("channex", doc)
    [booking] = await one_booking(gw)
    if "unmapped" in fixture:
        assert (booking["productId"], booking["optionId"]) == ("DEFAULT", "DEFAULT")
    assert gw.pms.calls(f"/booking_revisions/{revision_id}")
    await eventually(lambda: gw.pms.acked == [revision_id])
    await gw.wait_state(answer["id"], "processed")


async def test_channex_updates_keep_the_booking_uuid_and_carry_a_diff(gw: Harness) -> None:
    for number, revision in ((2, "rev-new"), (3, "rev-modified"), (4, "rev-cancelled")):
        gw.pms.add_revision(f"channex-booking-revision-{number}.json", revision)
        answer = await gw.push_ok(
            "channex", channex_push("channex-booking-1.json", revision_id=revision)
        )
        await gw.wait_state(answer["id"], "processed")

    bookings = await one_booking(gw, 3)
    bodies = gw.bookings.bodies("booking_update")
    assert [b["status"] for b in bookings] == ["CONFIRMED", "CONFIRMED", "CANCELLED"]
    assert len({b["uuid"] for b in bookings}) == 1
    assert bodies[0]["diff"] == []
    assert bodies[1]["diff"] and bodies[2]["diff"]
    assert bookings[2]["cancellation"]["utcCancelledAt"]
    assert gw.pms.acked == ["rev-new", "rev-modified", "rev-cancelled"]


async def test_channex_ari_gives_one_availability_update_per_product_option_day(
    gw: Harness,
) -> None:
    doc = load_fixture("channex-ari-1.json")
    answer = await gw.push_ok("channex", doc)
    [availability] = await eventually(lambda: gw.availability.availability())
    validate_octo("Availability", availability)
    [body] = gw.availability.bodies()
    assert (body["productId"], body["optionId"]) == (ARI_ROOM, ARI_RATE)
    assert availability["localDateTimeStart"].startswith("2021-12-02T00:00:00")
    assert availability["vacancies"] == 5
    assert availability["capacity"] == 12
    assert availability["available"] is True
    push = await gw.wait_state(answer["id"], "processed")
    assert push["note"]
    assert gw.pms.requests == []  # ARI needs no PMS read

    rows = [
        {"date": "2030-01-01", "room_type_id": "r1", "rate_plan_id": "p1", "availability": 3},
        {"date": "2030-01-02", "room_type_id": "r1", "rate_plan_id": "p1", "availability": 2},
        {"date": "2030-01-01", "room_type_id": "r2", "availability": 0},
        {"date": "2030-01-01", "room_type_id": "r1", "rate_plan_id": "p1", "availability": 1},
        {"date": "2030-01-03", "room_type_id": "r1", "rate_plan_id": "p1", "rate": 11100},
    ]
    await gw.push_ok("channex", {"event": "ari", "payload": rows, "property_id": "p"})
    await eventually(lambda: len(gw.availability.availability()) == 4)
    await gw.settled()
    seen = {
        (b["productId"], b["optionId"], b["availability"]["id"][:10]): b["availability"]
        for b in gw.availability.bodies()[1:]
    }
    assert set(seen) == {
        ("r1", "p1", "2030-01-01"),
        ("r1", "p1", "2030-01-02"),
        ("r2", "DEFAULT", "2030-01-01"),
    }
    for availability in seen.values():
        validate_octo("Availability", availability)
    # Several rows for one slot: the subscriber ends up with what the last one says.
    assert seen[("r1", "p1", "2030-01-01")]["vacancies"] == 1
    assert seen[("r2", "DEFAULT", "2030-01-01")]["status"] == "SOLD_OUT"


async def test_channex_ari_stop_sell_only_keeps_the_last_vacancies(gw: Harness) -> None:
    await gw.push_ok("channex", load_fixture("channex-ari-1.json"))
    await eventually(lambda: gw.availability.availability())
    row = {"date": "2021-12-02", "room_type_id": ARI_ROOM, "rate_plan_id": ARI_RATE}
    await gw.push_ok("channex", {"event": "ari", "payload": [{**row, "stop_sell_manual": True}]})
    await eventually(lambda: len(gw.availability.availability()) == 2)
    closed = gw.availability.availability()[1]
    validate_octo("Availability", closed)
    assert (closed["status"], closed["vacancies"], closed["available"]) == ("CLOSED", 5, False)

    await gw.push_ok("channex", {"event": "ari", "payload": [{**row, "stop_sell_manual": False}]})
    await eventually(lambda: len(gw.availability.availability()) == 3)
    reopened = gw.availability.availability()[2]
    assert (reopened["vacancies"], reopened["available"]) == (5, True)


async def test_channex_ari_automatic_stop_sell_is_ignored(gw: Harness) -> None:
    """Rows shaped like channex-ari-1.json where Channex set ``stop_sell`` itself: sold out, then
    rooms back at a zero rate. The subscriber sees SOLD_OUT and then the rooms, never CLOSED."""
    [sample] = load_fixture("channex-ari-1.json")["payload"]
    sold_out = {**sample, "availability": 0, "booked": 12, "stop_sell": True}
    await gw.push_ok("channex", {"event": "ari", "payload": [sold_out]})
    [first] = await eventually(lambda: gw.availability.availability())
    validate_octo("Availability", first)
    assert (first["status"], first["available"], first["vacancies"]) == ("SOLD_OUT", False, 0)

    free_rate = {**sample, "availability": 3, "booked": 9, "rate": 0, "stop_sell": True}
    only_flag = {"date": sample["date"], "room_type_id": ARI_ROOM, "rate_plan_id": ARI_RATE}
    await gw.push_ok("channex", {"event": "ari", "payload": [free_rate]})
    await eventually(lambda: len(gw.availability.availability()) == 2)
    answer = await gw.push_ok(
        "channex", {"event": "ari", "payload": [{**only_flag, "stop_sell": True}]}
    )
    await gw.wait_state(answer["id"], "processed")
    await gw.settled()
    assert len(gw.availability.availability()) == 2  # the automatic flag alone changes nothing
    second = gw.availability.availability()[1]
    validate_octo("Availability", second)
    assert (second["status"], second["available"], second["vacancies"]) == ("LIMITED", True, 3)


async def test_channex_ari_date_ranges_keep_the_last_vacancies(gw: Harness) -> None:
    row = {"room_type_id": "r9", "rate_plan_id": "p9", "date_from": "2030-02-01"}
    await gw.push_ok(
        "channex",
        {"event": "ari", "payload": [{**row, "date_to": "2030-02-03", "availability": 4}]},
    )
    await eventually(lambda: len(gw.availability.availability()) == 3)
    await gw.push_ok(
        "channex",
        {"event": "ari", "payload": [{**row, "date_to": "2030-02-02", "stop_sell_manual": True}]},
    )
    await eventually(lambda: len(gw.availability.availability()) == 5)
    closed = gw.availability.availability()[3:]
    assert [(a["status"], a["vacancies"]) for a in closed] == [("CLOSED", 4), ("CLOSED", 4)]


@pytest.mark.parametrize(
    "fixture",
    [
        "channex-message-1.json",
        "channex-review-1.json",
        "channex-sync-error-1.json",
        "channex-inquiry-1.json",
        "channex-channel-activate-1.json",
        "channex-channel-removal-warning-1.json",
        "channex-property-removal-warning-1.json",
        "channex-message-thread-booking-assigned-1.json",
    ],
)
async def test_channex_events_without_octo_meaning_are_stored(gw: Harness, fixture: str) -> None:
    doc = load_fixture(fixture)
    answer = await gw.push_ok("channex", doc)
    push = await gw.wait_state(answer["id"], "processed")
    assert doc["event"] in push["note"]
    assert push["payload"]["event"] == doc["event"]
    assert gw.events() == 0
    assert gw.pms.requests == []


async def test_channex_ari_without_payload_is_processed_without_events(gw: Harness) -> None:
    answer = await gw.push_ok("channex", load_fixture("channex-ari-3.json"))
    push = await gw.wait_state(answer["id"], "processed")
    assert push["note"]
    assert gw.events() == 0


# -- Beds24 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_beds24_v1_reads_the_booking(gw: Harness, method: str) -> None:
    gw.pms.beds24_bookings[str(BEDS24_ID)] = beds24_booking()
    response = await gw.push(
        "beds24",
        method=method,
        params={"bookid": str(BEDS24_ID), "status": "modify", "token": BEDS24_INGEST_TOKEN},
        token=None,
    )
    assert response.status == 200, await response.text()
    answer = await response.json()
    [booking] = await one_booking(gw)
    assert booking["supplierReference"] == str(BEDS24_ID)
    assert (booking["productId"], booking["optionId"]) == ("281392", "1")
    [read] = gw.pms.calls("/bookings")
    assert read.query == {"id": str(BEDS24_ID)}
    assert read.headers["token"] == BEDS24_TOKEN
    push = await gw.wait_state(answer["id"], "processed")
    assert push["payload"] == {"bookid": BEDS24_ID, "status": "modify"}


async def test_beds24_v1_card_data_is_never_stored_or_logged(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw.pms.beds24_bookings[str(BEDS24_ID)] = beds24_booking()
    card = "4111111111111111"
    form = {"cardNumber": card, "cvv": "737", "cardName": "Jane Card", "cardExpire": "12/29"}
    response = await gw.client.post(
        "/ingest/beds24",
        params={"bookid": str(BEDS24_ID), "status": "new", "token": BEDS24_INGEST_TOKEN},
        data=form,
    )
    assert response.status == 200, await response.text()
    answer = await response.json()
    await one_booking(gw)
    push = await gw.wait_state(answer["id"], "processed")
    assert card not in str(push)

    # A form body without a booking number is refused and kept without its body.
    response = await gw.client.post(
        "/ingest/beds24", params={"status": "new", "token": BEDS24_INGEST_TOKEN}, data=form
    )
    assert response.status == 400
    rejected = await gw.admin_push((await response.json())["id"])
    assert rejected["state"] == "failed"
    assert rejected["payload"]["body"] is None
    await gw.settled()

    # The database file and its WAL hold every byte the gateway wrote.
    raw = gw.stored_bytes()
    for secret in (card.encode(), b"Jane Card", b"12/29"):
        assert secret not in raw
    # The field as the gateway would have kept it: a JSON key, or the form's own bytes. A bare
    # "cvv" turns up by chance among the file's random bytes (a WAL frame header's salts and
    # checksums, a signing secret's base64): found once in 60 runs, with no card data kept.
    lowered = raw.lower()
    assert b'"cvv"' not in lowered and b"cvv=737" not in lowered
    assert card not in caplog.text
    assert "cvv" not in caplog.text.lower()


async def test_beds24_v2_single_object_and_array(gw: Harness) -> None:
    items = load_fixture("beds24-v2-booking-1.json")
    assert isinstance(items, list)
    answer = await gw.push_ok("beds24", items)
    [booking] = await one_booking(gw)
    assert booking["supplierReference"] == str(BEDS24_ID)
    await gw.wait_state(answer["id"], "processed")

    single = copy.deepcopy(items[0])
    single["booking"].update(id=555, modifiedTime="2026-02-15T11:00:00Z", apiReference="OTA-9")
    await gw.push_ok("beds24", single)
    bookings = await one_booking(gw, 2)
    assert bookings[1]["supplierReference"] == "555"
    assert bookings[1]["resellerReference"] == "OTA-9"
    assert gw.pms.requests == []  # version 2 carries the booking: nothing to read


async def test_beds24_v2_dedupes_on_booking_id_and_modified_time(gw: Harness) -> None:
    item = load_fixture("beds24-v2-booking-1.json")[0]
    first = await gw.push_ok("beds24", item)
    await one_booking(gw)

    # The same booking version again, in a different push (an array with another booking).
    other = copy.deepcopy(item)
    other["booking"].update(id=777)
    again = dict(item, timeStamp="2026-02-15T10:09:00Z", retries=1)
    second = await gw.push_ok("beds24", [again, other])
    assert second["id"] != first["id"]
    await gw.wait_state(second["id"], "processed")
    await gw.settled()
    refs = [b["supplierReference"] for b in gw.bookings.bookings()]
    assert refs == [str(BEDS24_ID), "777"]

    # The same single push again (a Beds24 retry): the same push.
    repeat = await gw.push_ok("beds24", dict(item, retries=2))
    assert (repeat["id"], repeat["duplicate"]) == (first["id"], True)

    cancelled = copy.deepcopy(item)
    cancelled["booking"].update(
        status="cancelled", modifiedTime="2026-02-15T12:00:00Z", cancelTime="2026-02-15T12:00:00Z"
    )
    await gw.push_ok("beds24", cancelled)
    await eventually(lambda: len(gw.bookings.bookings()) == 3)
    body = gw.bookings.bodies()[2]
    validate_octo("Booking", body["booking"])
    assert body["booking"]["status"] == "CANCELLED"
    assert body["booking"]["cancellation"]["utcCancelledAt"] == "2026-02-15T12:00:00Z"
    assert body["booking"]["uuid"] == gw.bookings.bookings()[0]["uuid"]
    assert body["diff"]
    await gw.settled()
    assert gw.events("booking_update") == 3


async def test_beds24_a_fractional_second_later_is_a_newer_version(gw: Harness) -> None:
    item = copy.deepcopy(load_fixture("beds24-v2-booking-1.json")[0])
    item["booking"].update(modifiedTime="2026-02-15T11:00:00Z")
    await gw.push_ok("beds24", item)
    [first] = await one_booking(gw)

    later = copy.deepcopy(item)
    later["booking"].update(
        status="cancelled", modifiedTime="2026-02-15T11:00:00.5Z", cancelTime="2026-02-15T11:00:00Z"
    )
    await gw.push_ok("beds24", later)
    bookings = await one_booking(gw, 2)
    assert bookings[1]["status"] == "CANCELLED"
    assert bookings[1]["uuid"] == first["uuid"]

    # A version from before the cancellation, arriving late: older, not sent.
    stale = copy.deepcopy(item)
    stale["booking"].update(modifiedTime="2026-02-15T11:00:00.25Z", comments="late copy")
    answer = await gw.push_ok("beds24", stale)
    await gw.wait_state(answer["id"], "processed")
    await gw.settled()
    assert [b["status"] for b in gw.bookings.bookings()] == ["CONFIRMED", "CANCELLED"]


def calendar(start: date, days: int, num_avail: int = 3) -> list[dict[str, Any]]:
    """One calendar range per day, from two days before ``start`` on."""
    first = start - timedelta(days=2)
    return [
        {
            "from": (first + timedelta(days=n)).isoformat(),
            "to": (first + timedelta(days=n)).isoformat(),
            "numAvail": num_avail,
            "override": "none",
            "price1": 90,
        }
        for n in range(days + 4)
    ]


async def test_beds24_inventory_sync_sends_changed_days_only(gw: Harness) -> None:
    today = datetime.now(UTC).date()
    entries = calendar(today, 100)
    entries[2 + 5]["numAvail"] = 0  # today + 5: sold out
    entries[2 + 10]["override"] = "blackout"  # today + 10: closed
    entries[2 + 11]["numAvail"] = -2  # overbooked
    gw.pms.beds24_calendars["123456"] = entries
    doc = load_fixture("beds24-inventory-1.json")
    answer = await gw.push_ok("beds24", doc)
    await gw.wait_state(answer["id"], "processed")

    [read] = gw.pms.calls("/inventory/rooms/calendar")
    assert read.headers["token"] == BEDS24_TOKEN
    assert read.query == {
        "roomId": "123456",
        "startDate": today.isoformat(),
        "endDate": (today + timedelta(days=89)).isoformat(),
        "includeNumAvail": "true",
        "includeOverride": "true",
    }
    received = await eventually(
        lambda: len(gw.availability.availability()) == 90 and gw.availability.bodies()
    )
    by_day = {b["availability"]["id"][:10]: b for b in received}
    assert sorted(by_day) == [(today + timedelta(days=n)).isoformat() for n in range(90)]
    for body in received:
        assert (body["productId"], body["optionId"]) == ("123456", "DEFAULT")
        validate_octo("Availability", body["availability"])
    assert by_day[(today + timedelta(days=5)).isoformat()]["availability"]["status"] == "SOLD_OUT"
    assert by_day[(today + timedelta(days=10)).isoformat()]["availability"]["status"] == "CLOSED"
    assert by_day[(today + timedelta(days=11)).isoformat()]["availability"]["vacancies"] == 0
    assert by_day[today.isoformat()]["availability"]["vacancies"] == 3
    assert gw.events("availability_update") == 90

    # The same sync again, nothing changed: no event.
    again = await gw.push_ok("beds24", doc)
    assert again["id"] != answer["id"]
    await gw.wait_state(again["id"], "processed")
    assert gw.events("availability_update") == 90

    # One day changed: exactly one event.
    entries[2 + 20]["numAvail"] = 1
    third = await gw.push_ok("beds24", doc)
    await gw.wait_state(third["id"], "processed")
    await gw.settled()
    assert gw.events("availability_update") == 91
    assert len(gw.availability.availability()) == 91
    last = gw.availability.bodies()[-1]["availability"]
    assert last["id"].startswith((today + timedelta(days=20)).isoformat())
    assert last["vacancies"] == 1


# -- fan-out ---------------------------------------------------------------------------------------


async def test_fan_out_respects_the_tenants_products(gateways: Gateways) -> None:
    gw = await gateways.start(sources={"channex": {"product_map": {ROOM_1: "room-1"}}})
    receiver_b, server_b = await gateways.receiver()
    await gw.subscribe(server_b, "booking_update", AUTH_B)
    availability_b, availability_server_b = await gateways.receiver()
    await gw.subscribe(availability_server_b, "availability_update", AUTH_B)

    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)  # ROOM_1 -> room-1
    gw.pms.add_revision("channex-booking-revision-2.json", "rev-unmapped")
    for revision in (REV_1, "rev-unmapped"):
        await gw.push_ok("channex", channex_push("channex-booking-1.json", revision_id=revision))
    rows = [
        {"date": "2030-03-01", "room_type_id": ROOM_1, "availability": 2},
        {"date": "2030-03-01", "room_type_id": "elsewhere", "availability": 2},
    ]
    await gw.push_ok("channex", {"event": "ari", "payload": rows})

    await eventually(lambda: len(gw.bookings.bookings()) == 2)
    await eventually(lambda: len(gw.availability.availability()) == 2)
    await gw.settled()
    assert sorted(b["productId"] for b in gw.bookings.bookings()) == sorted(
        ["room-1", "e2a15383-7843-4240-adda-736608d72eca"]
    )
    assert [b["productId"] for b in receiver_b.bookings()] == ["room-1"]
    assert [b["productId"] for b in availability_b.bodies()] == ["room-1"]
