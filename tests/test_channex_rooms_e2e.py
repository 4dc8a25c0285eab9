"""Channex rooms and times across revisions, end to end: what the subscriber receives.

Revisions are served by the fake Channex API, derived from Channex's Booking.com example
(channex-booking-revision-2/3/4.json), with the revision times Channex gives each revision.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.fake_pms import Harness, booking_push, eventually, load_fixture
from tests.octo_schema import validate_octo

# Both stores: the SQLite file and a PostgreSQL database.
pytestmark = pytest.mark.both_stores

BOOKING = "3e029821-d446-45e9-8394-42d78a3aa1b1"
DOUBLE = "e2a15383-7843-4240-adda-736608d72eca"
SUITE = "suite-room-type"


def sample_rooms(number: int) -> list[dict[str, Any]]:
    rooms: list[dict[str, Any]] = copy.deepcopy(
        load_fixture(f"channex-booking-revision-{number}.json")["data"]["attributes"]["rooms"]
    )
    return rooms


def suite_of(room: dict[str, Any]) -> dict[str, Any]:
    return {
        **copy.deepcopy(room),
        "booking_room_id": "suite-booking-room-1",
        "room_type_id": SUITE,
        "rate_plan_id": "suite-rate",
        "amount": "300.00",
        "guests": [{"name": "Suite", "surname": "Guest"}],
    }


async def push_revision(gw: Harness, revision_id: str) -> None:
    answer = await gw.push_ok("channex", booking_push(revision_id))
    await gw.wait_state(answer["id"], "processed")


def received(gw: Harness, count: int) -> Any:
    async def enough() -> list[dict[str, Any]] | None:
        bodies = gw.bookings.bodies("booking_update")
        return bodies if len(bodies) >= count else None

    return eventually(enough)


def latest_by_uuid(gw: Harness) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for booking in gw.bookings.bookings():
        validate_octo("Booking", booking)
        latest[booking["uuid"]] = booking
    return latest


async def test_a_two_room_booking_that_loses_a_room(gw: Harness) -> None:
    [double] = sample_rooms(2)
    gw.pms.add_revision(
        "channex-booking-revision-2.json", "rev-two-rooms", rooms=[double, suite_of(double)]
    )
    await push_revision(gw, "rev-two-rooms")
    first = await received(gw, 2)
    uuid_of = {body["booking"]["productId"]: body["booking"]["uuid"] for body in first}

    # The guest gives up the double room; Booking.com re-issues the remaining room's id.
    suite = {**suite_of(double), "booking_room_id": "suite-booking-room-2"}
    gw.pms.add_revision(
        "channex-booking-revision-3.json",
        "rev-one-room",
        rooms=[suite],
        inserted_at="2020-11-13T09:30:00.000000",
    )
    await push_revision(gw, "rev-one-room")
    await gw.settled()
    bodies = gw.bookings.bodies("booking_update")

    later = [body["booking"] for body in bodies[2:]]
    latest = latest_by_uuid(gw)
    assert set(latest) == set(uuid_of.values())  # no uuid appeared, none moved
    assert latest[uuid_of[DOUBLE]]["status"] == "CANCELLED"
    assert latest[uuid_of[DOUBLE]]["productId"] == DOUBLE
    assert latest[uuid_of[DOUBLE]]["cancellation"]["utcCancelledAt"] == "2020-11-13T09:30:00Z"
    assert latest[uuid_of[SUITE]]["status"] == "CONFIRMED"
    assert latest[uuid_of[SUITE]]["productId"] == SUITE
    # Never was the suite sent under the double room's uuid.
    assert all(b["productId"] == DOUBLE for b in later if b["uuid"] == uuid_of[DOUBLE])
    suite_update = [body for body in bodies[2:] if body["booking"]["uuid"] == uuid_of[SUITE]]
    # The suite's update (the customer renamed) carries no moving creation times.
    for body in suite_update:
        assert {entry["path"] for entry in body["diff"]} & {
            "/utcCreatedAt",
            "/utcConfirmedAt",
        } == set()
    # A revision is acknowledged after its events are stored, so after the push is processed.
    await eventually(lambda: gw.pms.acked == ["rev-two-rooms", "rev-one-room"])


async def test_booking_com_lifecycle_with_changing_booking_room_id(gw: Harness) -> None:
    times = {
        2: "2020-11-12T11:39:50.111087",
        3: "2020-11-12T15:20:00.500000",
        4: "2020-11-13T07:05:10.000000",
    }
    for number, inserted_at in times.items():
        gw.pms.add_revision(
            f"channex-booking-revision-{number}.json", f"rev-{number}", inserted_at=inserted_at
        )
        await push_revision(gw, f"rev-{number}")
    bodies = await received(gw, 3)
    await gw.settled()
    bodies = gw.bookings.bodies("booking_update")

    assert len(bodies) == 3  # no phantom room, no extra cancellation
    bookings = [body["booking"] for body in bodies]
    for booking in bookings:
        validate_octo("Booking", booking)
        assert booking["utcCreatedAt"] == booking["utcConfirmedAt"] == "2020-11-12T11:39:50Z"
    assert len({booking["uuid"] for booking in bookings}) == 1
    assert [booking["status"] for booking in bookings] == ["CONFIRMED", "CONFIRMED", "CANCELLED"]
    assert bookings[2]["cancellation"]["utcCancelledAt"] == "2020-11-13T07:05:10Z"
    changed = [{entry["path"] for entry in body["diff"]} for body in bodies]
    assert changed[0] == set()
    assert {"/contact/fullName", "/contact/firstName", "/contact/lastName"} <= changed[1]
    assert "/status" in changed[2] and "/cancellation" in changed[2]
    for paths in changed:
        assert not paths & {"/utcCreatedAt", "/utcConfirmedAt"}


async def test_an_older_revision_arriving_late_changes_nothing(gw: Harness) -> None:
    [double] = sample_rooms(2)
    gw.pms.add_revision(
        "channex-booking-revision-3.json",
        "rev-newer",
        rooms=[suite_of(double)],
        inserted_at="2020-11-13T10:00:00",
    )
    gw.pms.add_revision(
        "channex-booking-revision-2.json", "rev-older", rooms=[double, suite_of(double)]
    )
    await push_revision(gw, "rev-newer")
    await received(gw, 1)
    await push_revision(gw, "rev-older")
    await gw.settled()

    [booking] = gw.bookings.bookings()
    assert booking["productId"] == SUITE
    assert booking["utcCreatedAt"] == "2020-11-13T10:00:00Z"
    # The stale revision is acknowledged too (after its push is processed, so waited for).
    await eventually(lambda: sorted(gw.pms.acked) == ["rev-newer", "rev-older"])


async def test_the_feed_applies_one_bookings_revisions_oldest_first(gw: Harness) -> None:
    doc = load_fixture("channex-booking-2.json")
    property_id = doc["property_id"]
    [double] = sample_rooms(2)
    # Listed newest first: the gateway must still drop the double room, not add it back.
    gw.pms.add_revision(
        "channex-booking-revision-3.json",
        "rev-b",
        rooms=[suite_of(double)],
        inserted_at="2020-11-13T10:00:00",
        property_id=property_id,
    )
    gw.pms.add_revision(
        "channex-booking-revision-2.json",
        "rev-a",
        rooms=[double, suite_of(double)],
        property_id=property_id,
    )
    answer = await gw.push_ok("channex", doc)
    await gw.wait_state(answer["id"], "processed")
    await gw.settled()

    latest = latest_by_uuid(gw)
    assert sorted((b["productId"], b["status"]) for b in latest.values()) == [
        (DOUBLE, "CANCELLED"),
        (SUITE, "CONFIRMED"),
    ]
    assert all(b["utcCreatedAt"] == "2020-11-12T11:39:50Z" for b in latest.values())


async def test_revisions_answered_in_the_booking_message_shape(gw: Harness) -> None:
    """Channex's Booking.com examples as the API's answers, unchanged: ``type: booking``, whose
    ``id`` is the booking's (and whose ``revision_id`` is the same in all three). Each revision
    is the one the push named: the modification and the cancellation are sent, and each named
    revision is acknowledged (never the booking id)."""
    for number in (2, 3, 4):
        data = copy.deepcopy(load_fixture(f"channex-booking-revision-{number}.json")["data"])
        assert (data["type"], data["id"]) == ("booking", BOOKING)
        gw.pms.channex_revisions[f"rev-{number}"] = data
        await push_revision(gw, f"rev-{number}")
    await gw.settled()

    bodies = gw.bookings.bodies("booking_update")
    bookings = [body["booking"] for body in bodies]
    for booking in bookings:
        validate_octo("Booking", booking)
    assert [b["status"] for b in bookings] == ["CONFIRMED", "CONFIRMED", "CANCELLED"]
    assert len({b["uuid"] for b in bookings}) == 1
    assert bookings[1]["contact"]["firstName"] == "New Customer Name"
    await eventually(lambda: gw.pms.acked == ["rev-2", "rev-3", "rev-4"])
