"""Channex rooms across revisions (CONTRACT §6): each room keeps its uuid, a dropped or cancelled room
is sent CANCELLED, a new room gets a new uuid, and the booking's times stay put.

Revisions are derived from Channex's own Booking.com example (channex-booking-revision-2/3/4.json:
new, modified, cancelled; the modification changes ``booking_room_id``). A second room is the
sample's room with another room type, rate plan and ``booking_room_id``, as Channex lists one.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway.models import RoomMap
from gateway.octo import BookingEvent, booking_uuid
from gateway.sources.settings import TranslationSettings
from gateway_channex.rooms import match_rooms
from gateway_channex.translate import revision_attributes, translate_revision
from tests.octo_schema import load_fixture, validate_octo

SETTINGS = TranslationSettings()
BOOKING = "3e029821-d446-45e9-8394-42d78a3aa1b1"  # channex-booking-revision-2.json
DOUBLE = "e2a15383-7843-4240-adda-736608d72eca"
SUITE = "suite-room-type"


def sample(number: int, **attributes: Any) -> dict[str, Any]:
    revision = copy.deepcopy(
        revision_attributes(load_fixture(f"channex-booking-revision-{number}.json"))
    )
    revision.update(attributes)
    return revision


def suite(room: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A second room of the booking: the sample room as another room type and rate plan."""
    return {
        **copy.deepcopy(room),
        "booking_room_id": "suite-booking-room-1",
        "room_type_id": SUITE,
        "rate_plan_id": "suite-rate",
        "amount": "300.00",
        "occupancy": {"adults": 1, "children": 0, "infants": 0},
        "guests": [{"name": "Suite", "surname": "Guest"}],
        **fields,
    }


def two_rooms(number: int = 2, **attributes: Any) -> dict[str, Any]:
    revision = sample(number, **attributes)
    revision["rooms"] = [revision["rooms"][0], suite(revision["rooms"][0])]
    return revision


def translate(
    revision: dict[str, Any], known: RoomMap | None
) -> tuple[list[dict[str, Any]], RoomMap]:
    result = translate_revision(revision, SETTINGS, known)
    bookings = [dump(event) for event in result.events]
    return bookings, result.rooms


def dump(event: BookingEvent) -> dict[str, Any]:
    booking: dict[str, Any] = event.model_dump(mode="json", by_alias=True)["booking"]
    validate_octo("Booking", booking)
    assert event.booking_key == f"channex:{BOOKING}:{slot_of(booking['uuid'])}"
    return booking


def slot_of(uuid: str) -> int:
    return next(slot for slot in range(10) if booking_uuid("channex", BOOKING, slot) == uuid)


def by_product(bookings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {booking["productId"]: booking for booking in bookings}


def test_first_seen_rooms_keep_the_uuids_sent_before_room_maps() -> None:
    bookings, rooms = translate(two_rooms(), None)

    assert [b["uuid"] for b in bookings] == [
        booking_uuid("channex", BOOKING, 0),
        booking_uuid("channex", BOOKING, 1),
    ]
    assert [(room.slot, room.listed) for room in rooms.rooms] == [(0, True), (1, True)]
    assert rooms.created_at == "2020-11-12T11:39:50Z"


def test_a_room_dropped_from_the_booking_is_cancelled_and_keeps_its_uuid() -> None:
    first, rooms = translate(two_rooms(), None)
    double, suite_room = by_product(first)[DOUBLE], by_product(first)[SUITE]

    modified = two_rooms(3, inserted_at="2020-11-13T09:00:00.250000")
    modified["rooms"] = modified["rooms"][1:]  # the double room is gone, the suite stays
    second, after = translate(modified, rooms)

    assert len(second) == 2
    kept, dropped = by_product(second)[SUITE], by_product(second)[DOUBLE]
    # The suite keeps the suite's uuid: the double's uuid is never re-sent as the suite.
    assert kept["uuid"] == suite_room["uuid"]
    assert kept["status"] == "CONFIRMED"
    assert dropped["uuid"] == double["uuid"]
    assert dropped["status"] == "CANCELLED"
    assert dropped["cancellation"]["utcCancelledAt"] == "2020-11-13T09:00:00Z"
    assert dropped["availabilityId"] == double["availabilityId"]
    assert [item["uuid"] for item in dropped["unitItems"]] == [
        item["uuid"] for item in double["unitItems"]
    ]
    assert {item["status"] for item in dropped["unitItems"]} == {"CANCELLED"}
    assert [(room.slot, room.listed) for room in after.rooms] == [(1, True), (0, False)]

    # The same revision again (a replay): the double is not cancelled a second time.
    again, _ = translate(modified, after)
    assert [b["uuid"] for b in again] == [suite_room["uuid"]]


def test_a_new_room_gets_a_slot_the_booking_never_had() -> None:
    first, rooms = translate(two_rooms(), None)
    double, suite_room = two_rooms()["rooms"]
    family = suite(double, booking_room_id="family-1", room_type_id="family")
    added = sample(3)
    added["rooms"] = [double, suite_room, family]
    second, rooms = translate(added, rooms)

    assert by_product(second)["family"]["uuid"] == booking_uuid("channex", BOOKING, 2)
    assert {b["uuid"] for b in first} < {b["uuid"] for b in second}

    # The double room goes: cancelled, and its slot is never given out again.
    dropped = sample(3)
    dropped["rooms"] = [suite_room, family]
    third, rooms = translate(dropped, rooms)
    assert by_product(third)[DOUBLE]["status"] == "CANCELLED"
    assert sorted((room.slot, room.listed) for room in rooms.rooms) == [
        (0, False),
        (1, True),
        (2, True),
    ]

    twin = suite(double, booking_room_id="twin-1", room_type_id="twin")
    grown = sample(3)
    grown["rooms"] = [suite_room, family, twin]
    fourth, _ = translate(grown, rooms)
    assert by_product(fourth)["twin"]["uuid"] == booking_uuid("channex", BOOKING, 3)


def test_changed_booking_room_ids_fall_back_to_room_type_rate_plan_and_dates() -> None:
    """Booking.com re-issues booking_room_id on a modification (samples 2 -> 3): the rooms are
    recognised by room type, rate plan and stay, even listed in another order."""
    first, rooms = translate(two_rooms(), None)
    modified = sample(3)  # its double room has a new booking_room_id
    modified["rooms"] = [
        suite(modified["rooms"][0], booking_room_id="suite-booking-room-2"),
        modified["rooms"][0],
    ]
    second, _ = translate(modified, rooms)

    assert {b["productId"]: b["uuid"] for b in second} == {b["productId"]: b["uuid"] for b in first}
    assert {b["status"] for b in second} == {"CONFIRMED"}


def test_booking_room_id_wins_over_the_order_and_the_stay() -> None:
    _, rooms = translate(two_rooms(), None)
    first_room, second_room = two_rooms()["rooms"]
    # Two rooms of one type and stay, swapped: only booking_room_id tells them apart.
    twin = {**second_room, "room_type_id": DOUBLE, "rate_plan_id": first_room["rate_plan_id"]}
    revision = sample(3)
    revision["rooms"] = [twin, first_room]

    match = match_rooms(
        [
            {"booking_room_id": r["booking_room_id"], "room_type_id": r["room_type_id"]}
            for r in revision["rooms"]
        ],
        rooms,
    )
    assert match.slots == [1, 0]
    assert match.dropped == []


def test_remaining_rooms_pair_up_in_order() -> None:
    _, rooms = translate(two_rooms(), None)
    revision = sample(3)
    moved = [
        {**room, "booking_room_id": f"new-{n}", "checkin_date": "2020-11-14"}
        for n, room in enumerate(two_rooms()["rooms"])
    ]
    revision["rooms"] = moved

    bookings, _ = translate(revision, rooms)
    assert [slot_of(b["uuid"]) for b in bookings] == [0, 1]
    assert {b["status"] for b in bookings} == {"CONFIRMED"}


def test_a_cancelled_room_is_cancelled_once_and_keeps_its_cancellation_time() -> None:
    _, rooms = translate(two_rooms(), None)
    revision = two_rooms(3, inserted_at="2020-11-13T08:00:00")
    revision["rooms"][1]["is_cancelled"] = True
    bookings, after = translate(revision, rooms)
    cancelled = by_product(bookings)[SUITE]
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["cancellation"]["utcCancelledAt"] == "2020-11-13T08:00:00Z"

    later = two_rooms(3, inserted_at="2020-11-14T08:00:00")
    later["rooms"][1]["is_cancelled"] = True
    later["rooms"] = [later["rooms"][1], later["rooms"][0]]  # and listed first now
    again, _ = translate(later, after)
    assert by_product(again)[SUITE]["uuid"] == cancelled["uuid"]
    assert by_product(again)[SUITE]["cancellation"]["utcCancelledAt"] == "2020-11-13T08:00:00Z"
    assert by_product(again)[DOUBLE]["status"] == "CONFIRMED"


def test_booking_com_lifecycle_keeps_one_uuid_and_the_first_revisions_times() -> None:
    """Samples 2 -> 3 -> 4 with the revision times Channex would give each revision."""
    new = sample(2)
    modified = sample(3, inserted_at="2020-11-12T15:20:00.5")
    cancelled = sample(4, inserted_at="2020-11-13T07:05:10")

    first, rooms = translate(new, None)
    second, rooms = translate(modified, rooms)
    third, rooms = translate(cancelled, rooms)

    [a], [b], [c] = first, second, third
    assert a["uuid"] == b["uuid"] == c["uuid"] == booking_uuid("channex", BOOKING, 0)
    assert [a["status"], b["status"], c["status"]] == ["CONFIRMED", "CONFIRMED", "CANCELLED"]
    for booking in (a, b, c):
        assert booking["utcCreatedAt"] == booking["utcConfirmedAt"] == "2020-11-12T11:39:50Z"
    assert c["cancellation"]["utcCancelledAt"] == "2020-11-13T07:05:10Z"
    assert [(room.slot, room.details["booking_room_id"]) for room in rooms.rooms] == [
        (0, "5c0a93d1-10f8-4871-bd30-a850c3d98e9b")
    ]
    assert rooms.created_at == "2020-11-12T11:39:50Z"


def test_room_map_keeps_no_card_data_or_room_meta() -> None:
    _, rooms = translate(two_rooms(), None)
    text = rooms.model_dump_json()

    for secret in ("411111", "CARD_TOKEN", "guarantee", "cancel_penalties", "meta"):
        assert secret not in text


def test_a_cancelled_room_never_passes_its_uuid_to_a_new_room() -> None:
    """A room cancelled in one revision and gone from the next leaves its uuid CANCELLED: a room
    new in that revision (another type and stay, Booking.com's fresh booking_room_ids) gets a
    new uuid, not the cancelled one's through the order fallback."""
    _, rooms = translate(two_rooms(), None)
    revision = two_rooms(3, inserted_at="2020-11-13T08:00:00")
    revision["rooms"][1]["is_cancelled"] = True
    first, rooms = translate(revision, rooms)
    cancelled = by_product(first)[SUITE]
    assert cancelled["status"] == "CANCELLED"

    later = sample(3, inserted_at="2020-11-14T08:00:00")
    double = later["rooms"][0]
    family = suite(
        double,
        booking_room_id="family-1",
        room_type_id="family",
        checkin_date="2020-11-20",
        checkout_date="2020-11-22",
    )
    later["rooms"] = [double, family]
    second, _ = translate(later, rooms)

    assert by_product(second)["family"]["status"] == "CONFIRMED"
    assert by_product(second)["family"]["uuid"] == booking_uuid("channex", BOOKING, 2)
    assert all(b["uuid"] != cancelled["uuid"] for b in second)


def test_cancelled_rooms_pair_with_cancelled_rooms_first_in_the_order_fallback() -> None:
    _, rooms = translate(two_rooms(), None)
    revision = two_rooms(3, inserted_at="2020-11-13T08:00:00")
    revision["rooms"][1]["is_cancelled"] = True
    first, rooms = translate(revision, rooms)

    # Both rooms listed again with new booking_room_ids and moved dates, the cancelled one first.
    later = two_rooms(3, inserted_at="2020-11-14T08:00:00")
    moved = [
        {**room, "booking_room_id": f"again-{n}", "checkin_date": "2020-11-14"}
        for n, room in enumerate(later["rooms"])
    ]
    moved[1]["is_cancelled"] = True
    later["rooms"] = [moved[1], moved[0]]
    second, _ = translate(later, rooms)

    assert {b["productId"]: b["uuid"] for b in second} == {b["productId"]: b["uuid"] for b in first}
    assert by_product(second)[DOUBLE]["status"] == "CONFIRMED"
    assert by_product(second)[SUITE]["status"] == "CANCELLED"
