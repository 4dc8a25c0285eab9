"""Channex booking revisions and ARI rows -> OCTO (golden files + behaviour)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.octo import Availability, AvailabilityEvent, BookingEvent, booking_uuid
from gateway.sources.settings import TranslationSettings
from gateway.sources.translation import TranslationError
from gateway_channex.translate import (
    availability_from_ari,
    bookings_from_revision,
    revision_attributes,
)
from tests.octo_schema import assert_golden, load_fixture, validate_octo

REVISIONS = [f"channex-booking-revision-{n}.json" for n in range(1, 10)]
ARI = ["channex-ari-1.json", "channex-ari-2.json", "channex-ari-3.json"]
UTC_SETTINGS = TranslationSettings()
ROOM = "994d1375-dbbd-4072-8724-b2ab32ce781b"
RATE = "445835fb-7956-42ac-9efc-3e6f331f0808"


def revision(name: str = "channex-booking-revision-1.json") -> dict[str, Any]:
    return revision_attributes(load_fixture(name))


def dump_bookings(events: list[BookingEvent]) -> list[dict[str, Any]]:
    sent = [event.booking_json() for event in events]  # before anything reads the booking
    dumped = [event.model_dump(mode="json", by_alias=True) for event in events]
    for json_sent, event in zip(sent, dumped, strict=True):
        # What the event sends (the JSON it was made from) is the dump, key order included.
        assert json.dumps(json_sent) == json.dumps(event["booking"])
        validate_octo("Booking", event["booking"])
        validate_octo("Contact", event["booking"]["contact"])
        for item in event["booking"]["unitItems"]:
            validate_octo("UnitItem", item)
    return dumped


def dump_availability(events: list[AvailabilityEvent]) -> list[dict[str, Any]]:
    dumped = [event.model_dump(mode="json", by_alias=True) for event in events]
    for event, dump in zip(events, dumped, strict=True):
        validate_octo("Availability", dump["availability"])
        # What the event sends (the JSON it was built with) is the dump, key order included.
        assert json.dumps(event.availability_json()) == json.dumps(dump["availability"])
    return dumped


def only(events: list[BookingEvent]) -> dict[str, Any]:
    [event] = dump_bookings(events)
    booking: dict[str, Any] = event["booking"]
    return booking


# --- golden files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", REVISIONS)
def test_booking_revision_golden(name: str) -> None:
    events = bookings_from_revision(revision(name), UTC_SETTINGS)

    assert_golden(name, dump_bookings(events))


def test_booking_revision_feed_golden() -> None:
    feed = load_fixture("channex-booking-revision-feed-1.json")
    events = [
        event
        for item in feed["data"]
        for event in bookings_from_revision(revision_attributes(item), UTC_SETTINGS)
    ]

    assert_golden("channex-booking-revision-feed-1.json", dump_bookings(events))


@pytest.mark.parametrize("name", ARI)
def test_ari_golden(name: str) -> None:
    rows = load_fixture(name).get("payload") or []

    assert_golden(name, dump_availability(availability_from_ari(rows, UTC_SETTINGS, {})))


# --- booking revisions ----------------------------------------------------------------------


def test_revision_1_by_hand() -> None:
    booking = only(bookings_from_revision(revision(), UTC_SETTINGS))

    assert booking["status"] == "CONFIRMED"
    assert booking["supplierReference"] == "cfa33f3b-bd32-4b90-8ef9-bde2bfe986cd"
    assert booking["resellerReference"] == "9996013801"
    assert (booking["productId"], booking["optionId"]) == (ROOM, RATE)
    assert booking["availability"]["localDateTimeStart"] == "2019-04-26T00:00:00+00:00"
    assert booking["availability"]["localDateTimeEnd"] == "2019-04-27T00:00:00+00:00"
    assert booking["utcCreatedAt"] == booking["utcConfirmedAt"] == "2019-04-23T10:03:29Z"
    assert booking["contact"] == {
        "fullName": "User User",
        "firstName": "User",
        "lastName": "User",
        "emailAddress": "user@test.com",
        "phoneNumber": "1234567890",
        "locales": ["en"],
        "postalCode": "2031 BE",
        "country": "NL",
        "notes": None,
    }
    assert booking["notes"].startswith("You have a booker that would like free parking.")
    assert [item["unitId"] for item in booking["unitItems"]] == ["adult", "adult"]


def test_card_data_never_reaches_octo() -> None:
    for name in REVISIONS:
        attributes = revision(name)
        text = json.dumps(dump_bookings(bookings_from_revision(attributes, UTC_SETTINGS)))

        assert "guarantee" not in attributes
        for secret in ("411111", "CARD_TOKEN", "cvv", "CARDHOLDER", "VirtualCard"):
            assert secret not in text, (name, secret)


def test_revision_attributes_accepts_every_shape() -> None:
    message = load_fixture("channex-booking-revision-2.json")
    feed_item = load_fixture("channex-booking-revision-feed-1.json")["data"][0]

    assert revision_attributes(message)["booking_id"] == "3e029821-d446-45e9-8394-42d78a3aa1b1"
    assert revision_attributes(feed_item) == revision()
    assert revision_attributes(revision()) == revision()
    with pytest.raises(TranslationError, match="data"):
        revision_attributes({"data": [feed_item]})


def test_cancelled_revision_is_cancelled_with_a_cancellation() -> None:
    booking = only(
        bookings_from_revision(revision("channex-booking-revision-6.json"), UTC_SETTINGS)
    )

    assert booking["status"] == "CANCELLED"
    assert booking["cancellable"] is False
    assert booking["cancellation"] == {
        "refund": "FULL",
        "reason": None,
        "utcCancelledAt": "2020-08-26T20:09:28Z",
    }
    assert {item["status"] for item in booking["unitItems"]} == {"CANCELLED"}


def test_cancellation_fee_makes_a_partial_or_no_refund() -> None:
    fee_half = revision("channex-booking-revision-4.json")
    fee_all = {**fee_half, "services": [{**fee_half["services"][0], "total_price": "153.00"}]}

    assert (
        only(bookings_from_revision(fee_half, UTC_SETTINGS))["cancellation"]["refund"] == "PARTIAL"
    )
    assert only(bookings_from_revision(fee_all, UTC_SETTINGS))["cancellation"]["refund"] == "NONE"


def test_received_at_dates_the_update_the_revision_dates_the_cancellation() -> None:
    received = datetime(2020, 11, 12, 15, 0, 1, 500, tzinfo=UTC)
    events = bookings_from_revision(
        revision("channex-booking-revision-4.json"), UTC_SETTINGS, received_at=received
    )
    booking = only(events)

    assert booking["utcCreatedAt"] == "2020-11-12T11:39:50Z"
    assert booking["utcUpdatedAt"] == "2020-11-12T15:00:01Z"
    # The cancelling revision's inserted_at, not when the gateway happened to read it.
    assert booking["cancellation"]["utcCancelledAt"] == "2020-11-12T11:39:50Z"


def test_uuid_is_stable_across_revisions_of_one_booking() -> None:
    names = [
        "channex-booking-revision-2.json",
        "channex-booking-revision-3.json",
        "channex-booking-revision-4.json",
    ]
    bookings = [only(bookings_from_revision(revision(name), UTC_SETTINGS)) for name in names]

    assert [booking["status"] for booking in bookings] == ["CONFIRMED", "CONFIRMED", "CANCELLED"]
    assert {booking["uuid"] for booking in bookings} == {
        booking_uuid("channex", "3e029821-d446-45e9-8394-42d78a3aa1b1", 0)
    }
    first, *_ = bookings
    assert all(b["unitItems"][1]["uuid"] == first["unitItems"][1]["uuid"] for b in bookings)


def test_one_booking_per_room_with_its_own_dates_and_cancellation() -> None:
    attributes = revision()
    second = {
        **attributes["rooms"][0],
        "room_type_id": "suite",
        "checkin_date": "2019-04-27",
        "checkout_date": "2019-04-29",
        "occupancy": {"adults": 1, "children": 1, "infants": 1},
        "is_cancelled": True,
    }
    attributes = {**attributes, "status": "modified", "rooms": [attributes["rooms"][0], second]}

    events = bookings_from_revision(attributes, UTC_SETTINGS)
    first, other = (event["booking"] for event in dump_bookings(events))

    assert [event.booking_key for event in events] == [
        "channex:cfa33f3b-bd32-4b90-8ef9-bde2bfe986cd:0",
        "channex:cfa33f3b-bd32-4b90-8ef9-bde2bfe986cd:1",
    ]
    assert first["uuid"] != other["uuid"]
    assert (first["status"], other["status"]) == ("CONFIRMED", "CANCELLED")
    assert other["productId"] == "suite"
    assert other["availabilityId"] == "2019-04-27T00:00:00+00:00"
    assert [item["unitId"] for item in other["unitItems"]] == ["adult", "child", "infant"]


def test_status_map_overrides_the_defaults() -> None:
    pending = TranslationSettings(status_map={"new": "PENDING"})
    booking = only(bookings_from_revision(revision(), pending))

    assert booking["status"] == "PENDING"
    assert booking["utcConfirmedAt"] is None
    assert booking["cancellation"] is None

    ignore = TranslationSettings(status_map={"cancelled": "IGNORE"})
    assert bookings_from_revision(revision("channex-booking-revision-8.json"), ignore) == []
    assert len(bookings_from_revision(revision("channex-booking-revision-7.json"), ignore)) == 1


def test_unknown_status_is_an_error() -> None:
    with pytest.raises(TranslationError, match="unknown PMS status 'pending'"):
        bookings_from_revision({**revision(), "status": "pending"}, UTC_SETTINGS)


def test_maps_rename_products_options_and_units() -> None:
    settings = TranslationSettings(
        product_map={ROOM: "double-room"},
        option_map={RATE: "flexible"},
        unit_map={"adult": "adult_697e3ce8"},
        test_mode=True,
    )
    booking = only(bookings_from_revision(revision(), settings))

    assert (booking["productId"], booking["optionId"]) == ("double-room", "flexible")
    assert {item["unitId"] for item in booking["unitItems"]} == {"adult_697e3ce8"}
    assert booking["testMode"] is True


def test_timezone_gives_the_local_offset() -> None:
    berlin = TranslationSettings(timezone="Europe/Berlin")
    summer = {**revision(), "arrival_date": "2024-05-01", "departure_date": "2024-05-03"}
    summer["rooms"] = [{**summer["rooms"][0], "checkin_date": None, "checkout_date": None}]

    stay = only(bookings_from_revision(summer, berlin))["availability"]
    winter = only(bookings_from_revision(revision("channex-booking-revision-2.json"), berlin))

    assert stay["id"] == stay["localDateTimeStart"] == "2024-05-01T00:00:00+02:00"
    assert stay["localDateTimeEnd"] == "2024-05-03T00:00:00+02:00"
    assert stay["utcCutoffAt"] == "2024-04-30T22:00:00Z"
    assert winter["availabilityId"] == "2020-11-13T00:00:00+01:00"


def test_guests_name_the_unit_items() -> None:
    booking = only(
        bookings_from_revision(revision("channex-booking-revision-2.json"), UTC_SETTINGS)
    )

    assert booking["unitItems"][0]["contact"]["fullName"] == "Guest Name Guest Surname"
    assert booking["unitItems"][1]["contact"]["fullName"] is None


def test_blank_contact_fields_are_null() -> None:
    booking = only(
        bookings_from_revision(revision("channex-booking-revision-9.json"), UTC_SETTINGS)
    )

    assert booking["contact"]["emailAddress"] is None
    assert booking["contact"]["phoneNumber"] is None
    assert booking["contact"]["locales"] == []
    assert booking["resellerReference"] == "0123936109"


# --- ARI ------------------------------------------------------------------------------------


def ari_row(**fields: Any) -> dict[str, Any]:
    return {"date": "2024-05-01", "room_type_id": ROOM, "rate_plan_id": RATE, **fields}


def ari(
    rows: list[dict[str, Any]],
    previous: dict[Any, Availability] | None = None,
    settings: TranslationSettings = UTC_SETTINGS,
) -> list[dict[str, Any]]:
    return dump_availability(availability_from_ari(rows, settings, previous or {}))


def known(vacancies: int, capacity: int | None = None) -> dict[Any, Availability]:
    [event] = availability_from_ari(
        [
            ari_row(
                availability=vacancies,
                booked=None if capacity is None else capacity - vacancies,
                stop_sell=False,
            )
        ],
        UTC_SETTINGS,
        {},
    )
    return {event.key: event.availability}


def test_ari_sample_1_by_hand() -> None:
    [event] = ari(load_fixture("channex-ari-1.json")["payload"])

    assert event["productId"] == "27e24739-239c-4619-9c30-0dc390f5d7ac"
    assert event["optionId"] == "04c607e4-644d-45ea-ab1a-da920ee36e50"
    assert event["availability"]["id"] == "2021-12-02T00:00:00+00:00"
    assert event["availability"]["localDateTimeEnd"] == "2021-12-03T00:00:00+00:00"
    # 5 left of 5 + 7 booked: under half the capacity.
    assert (event["availability"]["vacancies"], event["availability"]["capacity"]) == (5, 12)
    assert event["availability"]["status"] == "LIMITED"
    assert event["availability"]["available"] is True


def test_rate_and_restriction_rows_produce_nothing() -> None:
    assert ari(load_fixture("channex-ari-2.json")["payload"]) == []
    assert ari([ari_row(min_stay_arrival=2, closed_to_arrival=True)]) == []


def test_status_rules() -> None:
    def status(**fields: Any) -> tuple[str, bool]:
        [event] = ari([ari_row(**fields)])
        return event["availability"]["status"], event["availability"]["available"]

    assert status(availability=6, booked=6, stop_sell=False) == ("AVAILABLE", True)
    assert status(availability=2, booked=3, stop_sell=False) == ("LIMITED", True)
    assert status(availability=0, booked=6, stop_sell=False) == ("SOLD_OUT", False)
    assert status(availability=4, stop_sell_manual=True) == ("CLOSED", False)
    assert status(availability=4, stop_sell=True, stop_sell_manual=True) == ("CLOSED", False)
    assert status(availability=1) == ("AVAILABLE", True)  # no booked: no capacity, no LIMITED


def test_automatic_stop_sell_changes_nothing() -> None:
    """Channex sets ``stop_sell`` itself when a day is sold out or its rate is 0 (ARI rows as in
    channex-ari-1.json); only ``stop_sell_manual`` closes a day."""

    def status(**fields: Any) -> tuple[str, bool, int]:
        [event] = ari([ari_row(**fields)])
        availability = event["availability"]
        return availability["status"], availability["available"], availability["vacancies"]

    # Sold out: Channex flags stop_sell; the day is SOLD_OUT, not CLOSED.
    assert status(availability=0, booked=6, stop_sell=True) == ("SOLD_OUT", False, 0)
    # Rooms left, rate 0: stop_sell is set, the rooms are still there.
    assert status(availability=4, booked=0, rate=0, stop_sell=True) == ("AVAILABLE", True, 4)
    assert status(availability=2, booked=6, rate=0, stop_sell=True) == ("LIMITED", True, 2)
    assert status(availability=3, stop_sell=True, stop_sell_manual=False) == (
        "AVAILABLE",
        True,
        3,
    )
    # A row carrying only the automatic flag changes nothing: no event at all.
    assert ari([ari_row(stop_sell=True)], known(7, capacity=10)) == []
    assert ari([ari_row(stop_sell=False)]) == []


def test_automatic_stop_sell_does_not_close_a_known_day() -> None:
    previous = known(5, capacity=12)

    [event] = ari([ari_row(availability=0, booked=12, stop_sell=True)], previous)
    [reopened] = ari([ari_row(availability=2, booked=10, stop_sell=False)], previous)

    assert (event["availability"]["status"], event["availability"]["vacancies"]) == ("SOLD_OUT", 0)
    assert reopened["availability"]["status"] == "LIMITED"


def test_negative_availability_counts_as_zero() -> None:
    [event] = ari([ari_row(availability=-2, booked=5)])

    assert event["availability"]["vacancies"] == 0
    assert event["availability"]["capacity"] == 3
    assert event["availability"]["status"] == "SOLD_OUT"


def test_stop_sell_only_keeps_the_previous_vacancies() -> None:
    previous = known(7, capacity=10)

    [closed] = ari([ari_row(stop_sell_manual=True)], previous)
    [reopened] = ari([ari_row(stop_sell_manual=False)], previous)

    assert closed["availability"]["vacancies"] == 7
    assert closed["availability"]["capacity"] == 10
    assert closed["availability"]["status"] == "CLOSED"
    assert reopened["availability"]["vacancies"] == 7
    assert reopened["availability"]["status"] == "AVAILABLE"


def test_stop_sell_only_without_previous_state_shows_no_vacancies() -> None:
    [closed] = ari([ari_row(stop_sell_manual=True)])
    [reopened] = ari([ari_row(stop_sell_manual=False)])

    assert (closed["availability"]["vacancies"], closed["availability"]["status"]) == (0, "CLOSED")
    assert reopened["availability"]["status"] == "SOLD_OUT"
    assert reopened["availability"]["available"] is False


def test_availability_only_keeps_a_previous_stop_sell() -> None:
    previous = {
        key: availability.model_copy(update={"status": "CLOSED", "available": False})
        for key, availability in known(3).items()
    }

    [event] = ari([ari_row(availability=5)], previous)

    assert (event["availability"]["vacancies"], event["availability"]["status"]) == (5, "CLOSED")


def test_several_rows_for_one_day_the_last_wins() -> None:
    other_day = ari_row(date="2024-05-02", availability=9, stop_sell=False)
    rows = [
        ari_row(availability=5, booked=5, stop_sell=False),
        other_day,
        ari_row(availability=3, booked=7, stop_sell=False),
        ari_row(stop_sell_manual=True),
    ]

    events = ari(rows)

    assert [event["availability"]["id"][:10] for event in events] == ["2024-05-01", "2024-05-02"]
    first = events[0]["availability"]
    assert (first["vacancies"], first["capacity"], first["status"]) == (3, 10, "CLOSED")


def test_date_ranges_are_inclusive() -> None:
    rows = [ari_row(date=None, date_from="2024-05-30", date_to="2024-06-01", availability=2)]

    events = ari(rows)

    assert [event["availability"]["id"][:10] for event in events] == [
        "2024-05-30",
        "2024-05-31",
        "2024-06-01",
    ]


def test_ari_mapping_timezone_and_default_option() -> None:
    settings = TranslationSettings(timezone="Europe/Berlin", product_map={ROOM: "double-room"})

    [event] = ari([ari_row(rate_plan_id=None, availability=1)], settings=settings)

    assert (event["productId"], event["optionId"]) == ("double-room", "DEFAULT")
    assert event["availability"]["localDateTimeStart"] == "2024-05-01T00:00:00+02:00"
    assert event["availability"]["utcCutoffAt"] == "2024-04-30T22:00:00Z"


def test_bad_ari_rows_are_errors() -> None:
    with pytest.raises(TranslationError, match=r"payload\[0\]\.room_type_id"):
        ari([ari_row(room_type_id=None, availability=1)])
    with pytest.raises(TranslationError, match=r"payload\[0\]\.availability"):
        ari([ari_row(availability="many")])
    with pytest.raises(TranslationError, match=r"payload\[0\]\.date"):
        ari([ari_row(date="01/05/2024", availability=1)])


# --- settings -------------------------------------------------------------------------------


def test_settings_validate_timezone_statuses_and_units() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        TranslationSettings(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="unknown OCTO statuses"):
        TranslationSettings(status_map={"new": "BOOKED"})
    with pytest.raises(ValidationError, match="unknown unit kinds"):
        TranslationSettings(unit_map={"senior": "x"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        TranslationSettings.model_validate({"product_mpa": {}})


def test_settings_from_a_source_table_take_only_their_keys() -> None:
    table = {
        "token": "t",
        "api_url": "https://x",
        "timezone": "Europe/Berlin",
        "product_map": {"1": "room"},
    }

    settings = TranslationSettings.from_source(table)

    assert settings.timezone == "Europe/Berlin"
    assert settings.product_id("1") == "room"
