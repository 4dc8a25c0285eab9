"""Beds24 bookings and inventory calendars -> OCTO (golden files + behaviour)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from gateway.octo import AvailabilityEvent, BookingEvent, booking_uuid
from gateway.sources.settings import TranslationSettings
from gateway.sources.translation import TranslationError
from gateway_beds24.translate import availability_from_calendar, booking_from_beds24
from tests.octo_schema import assert_golden, load_fixture, validate_octo

UTC_SETTINGS = TranslationSettings()
MARCH_1, MARCH_7 = date(2026, 3, 1), date(2026, 3, 7)


def sample_booking(**changes: Any) -> dict[str, Any]:
    [item] = load_fixture("beds24-v2-booking-1.json")
    booking: dict[str, Any] = item["booking"]
    return {**booking, **changes}


def dump_booking(event: BookingEvent | None) -> dict[str, Any] | None:
    if event is None:
        return None
    dumped = event.model_dump(mode="json", by_alias=True)
    validate_octo("Booking", dumped["booking"])
    # What the event sends (the JSON it was made from) is the booking's dump, key order included.
    sent = event.booking_json()
    assert sent == dumped["booking"]
    assert json.dumps(sent) == json.dumps(dumped["booking"])
    return dumped


def translate(settings: TranslationSettings = UTC_SETTINGS, **changes: Any) -> dict[str, Any]:
    dumped = dump_booking(booking_from_beds24(sample_booking(**changes), settings))
    assert dumped is not None
    booking: dict[str, Any] = dumped["booking"]
    return booking


def dump_days(events: list[AvailabilityEvent]) -> list[dict[str, Any]]:
    dumped = [event.model_dump(mode="json", by_alias=True) for event in events]
    for event in dumped:
        validate_octo("Availability", event["availability"])
    return dumped


def calendar(settings: TranslationSettings = UTC_SETTINGS) -> list[AvailabilityEvent]:
    items = load_fixture("beds24-calendar-1.json")["data"]
    return availability_from_calendar(items, settings, MARCH_1, MARCH_7)


# --- golden files ---------------------------------------------------------------------------


def test_v2_webhook_golden() -> None:
    items = load_fixture("beds24-v2-booking-1.json")
    events = [dump_booking(booking_from_beds24(item["booking"], UTC_SETTINGS)) for item in items]

    assert_golden("beds24-v2-booking-1.json", events)


def test_booking_get_answer_golden_equals_the_webhook_booking() -> None:
    answer = load_fixture("beds24-booking-get-1.json")
    events = [dump_booking(booking_from_beds24(item, UTC_SETTINGS)) for item in answer["data"]]

    assert answer["count"] == len(answer["data"]) == 1
    assert_golden("beds24-booking-get-1.json", events)
    assert events == [dump_booking(booking_from_beds24(sample_booking(), UTC_SETTINGS))]


def test_calendar_golden() -> None:
    assert_golden("beds24-calendar-1.json", dump_days(calendar()))


# --- bookings -------------------------------------------------------------------------------


def test_sample_booking_by_hand() -> None:
    booking = translate()

    assert booking["status"] == "CONFIRMED"
    assert booking["supplierReference"] == "82279106"
    assert booking["resellerReference"] is None
    assert (booking["productId"], booking["optionId"]) == ("281392", "1")
    assert booking["uuid"] == booking_uuid("beds24", "82279106")
    assert booking["availabilityId"] == "2026-02-16T00:00:00+00:00"
    assert booking["availability"]["localDateTimeEnd"] == "2026-02-17T00:00:00+00:00"
    assert booking["utcCreatedAt"] == booking["utcConfirmedAt"] == "2026-02-12T19:49:04Z"
    assert booking["utcUpdatedAt"] == "2026-02-15T10:07:22Z"
    assert [item["unitId"] for item in booking["unitItems"]] == ["adult", "adult"]
    assert booking["contact"]["locales"] == ["pt"]
    assert booking["contact"]["fullName"] is None
    assert booking["notes"] is None


def test_black_booking_is_no_booking() -> None:
    assert booking_from_beds24(sample_booking(status="black"), UTC_SETTINGS) is None


def test_status_map_ignore_and_override() -> None:
    ignore_requests = TranslationSettings(status_map={"request": "IGNORE"})
    black_as_booking = TranslationSettings(status_map={"black": "CONFIRMED"})

    assert booking_from_beds24(sample_booking(status="request"), ignore_requests) is None
    assert translate(black_as_booking, status="black")["status"] == "CONFIRMED"


@pytest.mark.parametrize(
    ("status", "octo"),
    [
        ("new", "CONFIRMED"),
        ("request", "PENDING"),
        ("inquiry", "PENDING"),
        ("Confirmed", "CONFIRMED"),
    ],
)
def test_default_statuses(status: str, octo: str) -> None:
    booking = translate(status=status)

    assert booking["status"] == octo
    assert (booking["utcConfirmedAt"] is None) == (octo == "PENDING")
    assert booking["cancellation"] is None


def test_cancelled_booking_uses_cancel_time() -> None:
    booking = translate(status="cancelled", cancelTime="2026-02-15T10:07:20Z")

    assert booking["status"] == "CANCELLED"
    assert booking["cancellable"] is False
    assert booking["cancellation"] == {
        "refund": "FULL",
        "reason": None,
        "utcCancelledAt": "2026-02-15T10:07:20Z",
    }
    assert {item["status"] for item in booking["unitItems"]} == {"CANCELLED"}


def test_cancelled_without_cancel_time_uses_modified_time() -> None:
    booking = translate(status="cancelled", modifiedTime="2026-02-15 11:00:00")

    assert booking["cancellation"]["utcCancelledAt"] == "2026-02-15T11:00:00Z"
    assert booking["utcUpdatedAt"] == "2026-02-15T11:00:00Z"


def test_uuid_is_stable_across_modifications() -> None:
    first = translate()
    later = translate(numAdult=3, modifiedTime="2026-02-16T08:00:00Z", status="cancelled")

    assert later["uuid"] == first["uuid"]
    assert later["unitItems"][0]["uuid"] == first["unitItems"][0]["uuid"]
    assert len(later["unitItems"]) == 3


def test_contact_guests_and_notes() -> None:
    booking = translate(
        firstName="Ana",
        lastName="Silva",
        email="ana@example.pt",
        phone="",
        mobile="+351 900 000 000",
        country2="pt",
        postcode="1000-001",
        comments="Late arrival",
        apiReference="BDC-123",
        numChild=1,
    )

    assert booking["contact"] == {
        "fullName": "Ana Silva",
        "firstName": "Ana",
        "lastName": "Silva",
        "emailAddress": "ana@example.pt",
        "phoneNumber": "+351 900 000 000",
        "locales": ["pt"],
        "postalCode": "1000-001",
        "country": "PT",
        "notes": None,
    }
    assert booking["notes"] == "Late arrival"
    assert booking["resellerReference"] == "BDC-123"
    assert [item["unitId"] for item in booking["unitItems"]] == ["adult", "adult", "child"]


def test_maps_timezone_and_default_option() -> None:
    settings = TranslationSettings(
        timezone="Europe/Lisbon",
        product_map={"281392": "studio"},
        unit_map={"adult": "adult-unit"},
    )
    booking = translate(settings, offerId=None, arrival="2026-07-01", departure="2026-07-04")

    assert (booking["productId"], booking["optionId"]) == ("studio", "DEFAULT")
    assert booking["availabilityId"] == "2026-07-01T00:00:00+01:00"
    assert booking["availability"]["utcCutoffAt"] == "2026-06-30T23:00:00Z"
    assert {item["unitId"] for item in booking["unitItems"]} == {"adult-unit"}


def test_bad_bookings_are_errors() -> None:
    with pytest.raises(TranslationError, match="unknown PMS status"):
        translate(status="")
    with pytest.raises(TranslationError, match="arrival"):
        translate(arrival=None)
    with pytest.raises(TranslationError, match="bookingTime"):
        translate(bookingTime=None, modifiedTime="")


# --- calendar -------------------------------------------------------------------------------


def by_day(events: list[AvailabilityEvent], product: str) -> dict[str, dict[str, Any]]:
    return {
        event.availability.id[:10]: event.availability.model_dump(mode="json", by_alias=True)
        for event in events
        if event.product_id == product
    }


def test_one_event_per_room_and_day_within_the_window() -> None:
    events = calendar()

    assert len(events) == 14
    assert [event.product_id for event in events] == ["123456"] * 7 + ["123457"] * 7
    assert {event.option_id for event in events} == {"DEFAULT"}
    assert list(by_day(events, "123457")) == [f"2026-03-0{n}" for n in range(1, 8)]


def test_calendar_statuses() -> None:
    days = by_day(calendar(), "123456")

    assert (days["2026-03-01"]["vacancies"], days["2026-03-01"]["status"]) == (4, "AVAILABLE")
    assert days["2026-03-01"]["capacity"] is None
    assert (days["2026-03-04"]["vacancies"], days["2026-03-04"]["status"]) == (0, "SOLD_OUT")
    # numAvail -1 (overbooked) counts as 0.
    assert (days["2026-03-05"]["vacancies"], days["2026-03-05"]["status"]) == (0, "SOLD_OUT")
    assert days["2026-03-05"]["available"] is False
    assert (days["2026-03-06"]["vacancies"], days["2026-03-06"]["status"]) == (3, "CLOSED")
    assert days["2026-03-07"]["available"] is False


def test_calendar_timezone_and_product_map() -> None:
    settings = TranslationSettings(timezone="Europe/Berlin", product_map={"123456": "double"})

    days = by_day(calendar(settings), "double")

    assert days["2026-03-01"]["localDateTimeStart"] == "2026-03-01T00:00:00+01:00"
    assert days["2026-03-01"]["utcCutoffAt"] == "2026-02-28T23:00:00Z"


def test_later_ranges_win_and_ranges_without_counts_are_skipped() -> None:
    items = [
        {
            "roomId": "7",
            "calendar": [
                {"from": "2026-03-01", "to": "2026-03-02", "numAvail": 5},
                {"from": "2026-03-02", "numAvail": 1},
                {"from": "2026-03-03", "to": "2026-03-03", "override": "blackout"},
            ],
        }
    ]

    days = by_day(availability_from_calendar(items, UTC_SETTINGS, MARCH_1, MARCH_7), "7")

    assert {day: slot["vacancies"] for day, slot in days.items()} == {
        "2026-03-01": 5,
        "2026-03-02": 1,
    }


def test_empty_window_gives_nothing() -> None:
    items = load_fixture("beds24-calendar-1.json")["data"]

    assert availability_from_calendar(items, UTC_SETTINGS, MARCH_7, MARCH_1) == []
