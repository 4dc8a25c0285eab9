"""gateway.octo: wire shape, OCTO rules enforced by the models, stable booking uuids."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.delivery.worker import supplier_object
from gateway.octo import (
    Availability,
    AvailabilityEvent,
    Booking,
    BookingCancellation,
    BookingEvent,
    Contact,
    OpeningHours,
    Supplier,
    SupplierContact,
    UnitItem,
    booking_key,
    booking_uuid,
)
from gateway.samples import sample_data
from gateway.sources.settings import TranslationSettings
from tests.octo_schema import FIXTURES, schema_path, validate_octo


def slot(**changes: Any) -> Availability:
    values: dict[str, Any] = {
        "id": "2024-05-01T00:00:00+02:00",
        "local_date_time_start": "2024-05-01T00:00:00+02:00",
        "local_date_time_end": "2024-05-02T00:00:00+02:00",
        "utc_cutoff_at": "2024-04-30T22:00:00Z",
        "all_day": True,
        "available": True,
        "status": "AVAILABLE",
        "vacancies": 3,
        "capacity": 4,
    }
    return Availability(**{**values, **changes})


def booking(**changes: Any) -> Booking:
    stay = slot()
    values: dict[str, Any] = {
        "id": "b-1",
        "uuid": booking_uuid("test", "1"),
        "test_mode": False,
        "reseller_reference": None,
        "supplier_reference": "1",
        "status": "CONFIRMED",
        "utc_created_at": "2024-04-01T10:00:00Z",
        "utc_updated_at": "2024-04-01T10:00:00Z",
        "utc_confirmed_at": "2024-04-01T10:00:00Z",
        "product_id": "room",
        "option_id": "DEFAULT",
        "cancellable": True,
        "cancellation": None,
        "availability_id": stay.id,
        "availability": stay,
        "contact": Contact(first_name="Ada", locales=["en"]),
        "notes": None,
        "unit_items": [UnitItem(uuid="u-1", unit_id="adult", status="CONFIRMED")],
    }
    return Booking(**{**values, **changes})


def cancelled_booking(at: str = "2024-04-02T10:00:00Z") -> Booking:
    """``booking()`` cancelled at ``at``, with a full refund."""
    return booking(
        status="CANCELLED",
        cancellable=False,
        cancellation=BookingCancellation(refund="FULL", reason=None, utc_cancelled_at=at),
    )


def test_booking_dumps_every_required_key_in_camel_case() -> None:
    dumped = booking().model_dump(mode="json", by_alias=True)

    validate_octo("Booking", dumped)
    assert dumped["utcConfirmedAt"] == "2024-04-01T10:00:00Z"
    assert dumped["unitItems"][0]["unitId"] == "adult"
    assert dumped["contact"]["firstName"] == "Ada"
    assert dumped["contact"]["emailAddress"] is None
    assert "pricing" not in dumped
    assert {"utcExpiresAt", "utcRedeemedAt", "voucher", "deliveryMethods"} <= set(dumped)


def test_cancelled_booking_validates() -> None:
    cancelled = cancelled_booking("2024-04-02T09:00:00Z")

    validate_octo("Booking", cancelled.model_dump(mode="json", by_alias=True))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"utc_confirmed_at": None}, "CONFIRMED booking needs utcConfirmedAt"),
        (
            {
                "cancellation": BookingCancellation(
                    refund="NONE", reason=None, utc_cancelled_at="2024-04-02T09:00:00Z"
                )
            },
            "CONFIRMED booking needs utcConfirmedAt and no cancellation",
        ),
        ({"status": "CANCELLED"}, "CANCELLED booking needs a cancellation"),
        ({"availability_id": "2024-05-02T00:00:00+02:00"}, "availabilityId must equal"),
        ({"utc_created_at": "2024-04-01T10:00:00+00:00"}, "should match pattern"),
        ({"status": "BOOKED"}, "Input should be"),
    ],
)
def test_booking_refuses_what_octo_validators_refuse(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        booking(**changes)


def test_availability_id_is_its_start_and_local_times_carry_an_offset() -> None:
    with pytest.raises(ValidationError, match="id must equal localDateTimeStart"):
        slot(id="2024-05-01")
    with pytest.raises(ValidationError, match="should match pattern"):
        slot(local_date_time_end="2024-05-02T00:00:00")


def test_availability_validates_and_opening_hours_use_from() -> None:
    hours = slot(opening_hours=[OpeningHours(from_="08:00", to="16:00")])
    dumped = hours.model_dump(mode="json", by_alias=True)

    validate_octo("Availability", dumped)
    assert dumped["openingHours"] == [{"from": "08:00", "to": "16:00"}]
    assert OpeningHours.model_validate({"from": "08:00", "to": "16:00"}).from_ == "08:00"


def test_models_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        Contact(nickname="x")  # type: ignore[call-arg]


def test_supplier_validates() -> None:
    supplier = Supplier(
        id="octo-gateway",
        name="Hotel",
        endpoint="https://gateway.example/octo",
        contact=SupplierContact(email="ops@example.com"),
    )

    validate_octo("Supplier", supplier.model_dump(mode="json", by_alias=True))


def test_booking_uuid_is_stable_and_distinct_per_room() -> None:
    first = booking_uuid("channex", "abc", 0)

    assert first == booking_uuid("channex", "abc", 0)
    # Pinned: a changed namespace would give every booking a new uuid.
    assert first == str(
        uuid.uuid5(uuid.UUID("6f1c2a8e-3b5d-5e7a-9c41-0d2b8f6a7e13"), "channex:abc:0")
    )
    assert len({first, booking_uuid("channex", "abc", 1), booking_uuid("channex", "abc")}) == 3
    assert booking_uuid("beds24", "abc") != booking_uuid("channex", "abc")
    assert booking_key("beds24", "42") == "beds24:42"
    assert booking_key("channex", "abc", 2) == "channex:abc:2"


def test_an_event_made_from_octo_json_is_validated_and_sends_that_json() -> None:
    wire = booking().model_dump(mode="json", by_alias=True)

    event = BookingEvent.from_wire(wire, booking_key="test:1", revision="r1")

    assert event.booking == booking()
    assert event == BookingEvent(booking=booking(), booking_key="test:1", revision="r1")
    assert event != BookingEvent(booking=booking(), booking_key="test:1", revision="r2")
    assert event.booking_json() is wire  # not dumped again
    assert (event.booking_key, event.revision) == ("test:1", "r1")
    with pytest.raises(ValidationError, match="utcCreatedAt"):
        BookingEvent.from_wire({**wire, "utcCreatedAt": "soon"}, booking_key="test:1")


def test_an_event_whose_booking_was_replaced_sends_the_new_booking() -> None:
    event = BookingEvent.from_wire(
        booking().model_dump(mode="json", by_alias=True), booking_key="test:1"
    )
    cancelled = cancelled_booking()

    copy = event.model_copy(update={"booking": cancelled})
    event.booking = cancelled

    for changed in (copy, event):
        assert changed.booking_json() == cancelled.model_dump(mode="json", by_alias=True)
    built = BookingEvent(booking=booking(), booking_key="test:1")
    assert built.booking_json() == booking().model_dump(mode="json", by_alias=True)


def test_availability_event_key_and_wire_shape() -> None:
    event = AvailabilityEvent(product_id="room", option_id="rate", availability=slot())

    assert event.key == ("room", "rate", "2024-05-01")
    assert set(event.model_dump(mode="json", by_alias=True)) == {
        "productId",
        "optionId",
        "availability",
    }


def test_schema_bundle_falls_back_to_the_fixture_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCTO_SCHEMAS", str(FIXTURES))
    assert schema_path() == FIXTURES / "octo-core.schemas.json"

    monkeypatch.delenv("OCTO_SCHEMAS")
    shared = schema_path()
    if shared != FIXTURES / "octo-core.schemas.json":
        # The copy must not drift from the shared bundle it stands in for.
        assert shared.read_bytes() == (FIXTURES / "octo-core.schemas.json").read_bytes()


def test_the_supplier_sent_with_every_event_validates(make_config: Any) -> None:
    config = make_config(
        supplier={"id": "hotel-1", "name": "Hotel", "email": "ops@hotel.example"},
        server={"public_url": "https://gateway.example/"},
    )
    supplier = supplier_object(config)
    validate_octo("Supplier", supplier)
    assert supplier["endpoint"] == "https://gateway.example/octo"
    assert supplier["contact"] == {
        "website": None,
        "email": "ops@hotel.example",
        "telephone": None,
        "address": None,
    }


@pytest.mark.parametrize("event", ["booking_update", "availability_update"])
def test_the_static_sample_events_validate(event: str) -> None:
    """/test deliveries and template checks send these; the core makes them without a vendor."""
    data = sample_data(event)
    if event == "booking_update":
        validate_octo("Booking", data["booking"])
    else:
        validate_octo("Availability", data["availability"])


@given(st.text(max_size=80))
def test_uuid5_text_is_the_standard_uuid5(name: str) -> None:
    from gateway.octo import BOOKING_NAMESPACE, uuid5_text

    assert uuid5_text(BOOKING_NAMESPACE, name) == str(uuid.uuid5(BOOKING_NAMESPACE, name))
    assert uuid5_text(uuid.NAMESPACE_URL, name) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/St_Johns", "Asia/Kathmandu"])
@pytest.mark.parametrize(
    "counts", [(0, 5, False), (3, 10, False), (None, None, False), (4, None, True)]
)
def test_a_day_built_without_validation_is_what_validation_builds(
    zone: str, counts: tuple[int | None, int | None, bool]
) -> None:
    from datetime import date
    from zoneinfo import ZoneInfo

    from gateway.sources.translation import availability_slot

    vacancies, capacity, closed = counts
    built = availability_slot(
        date(2027, 3, 28),
        date(2027, 3, 29),
        ZoneInfo(zone),
        vacancies=vacancies,
        capacity=capacity,
        closed=closed,
    )
    assert built == Availability.model_validate(built.model_dump())
    validate_octo("Availability", built.model_dump(mode="json", by_alias=True))


def test_a_day_in_a_historical_offset_with_seconds_is_refused() -> None:
    from datetime import date
    from zoneinfo import ZoneInfo

    from gateway.sources.translation import availability_slot

    # Paris kept local mean time (+00:09:21) until 1911: OCTO's timestamp pattern has no seconds.
    with pytest.raises(ValidationError):
        availability_slot(
            date(1890, 1, 1),
            date(1890, 1, 2),
            ZoneInfo("Europe/Paris"),
            vacancies=1,
            capacity=None,
            closed=False,
        )


def test_a_day_event_sends_its_json_until_its_availability_is_replaced() -> None:
    from datetime import date

    from gateway.sources.translation import day_event

    event = day_event(
        "room",
        "DEFAULT",
        date(2027, 3, 28),
        TranslationSettings(timezone="Europe/Paris"),
        vacancies=2,
        capacity=10,
        closed=False,
    )
    sent = event.availability_json()
    assert sent is event.availability_json()  # built once, not dumped per call
    assert json.dumps(sent) == json.dumps(event.availability.model_dump(mode="json", by_alias=True))
    assert sent["status"] == "LIMITED"
    closed = event.availability.model_copy(update={"status": "CLOSED", "available": False})
    copy = event.model_copy(update={"availability": closed})
    event.availability = closed
    for changed in (copy, event):
        assert changed.availability_json() == closed.model_dump(mode="json", by_alias=True)


def test_a_day_event_in_a_historical_offset_with_seconds_is_refused() -> None:
    from datetime import date

    from gateway.sources.translation import day_event

    with pytest.raises(ValidationError):
        day_event(
            "room",
            "DEFAULT",
            date(1890, 1, 1),
            TranslationSettings(timezone="Europe/Paris"),
            vacancies=1,
            capacity=None,
            closed=False,
        )


def test_a_stored_availability_not_in_the_shape_the_gateway_writes_is_validated() -> None:
    from gateway.sources.translation import stored_availability

    sent = Availability(
        id="2027-01-01T00:00:00+00:00",
        local_date_time_start="2027-01-01T00:00:00+00:00",
        local_date_time_end="2027-01-02T00:00:00+00:00",
        utc_cutoff_at="2027-01-01T00:00:00Z",
        all_day=True,
        available=True,
        status="AVAILABLE",
        vacancies=3,
        capacity=None,
    ).model_dump(mode="json", by_alias=True)
    assert stored_availability(sent) == Availability.model_validate(sent)
    hours = stored_availability({**sent, "openingHours": [{"from": "09:00", "to": "17:00"}]})
    assert hours.opening_hours[0].from_ == "09:00"  # validated into the nested model
    with pytest.raises(ValidationError):
        stored_availability({**sent, "unknown": 1})  # not the shape: validated, refused
    with pytest.raises(ValidationError):
        stored_availability({key: value for key, value in sent.items() if key != "status"})


def test_an_event_made_from_json_taken_as_valid_validates_it_only_when_its_booking_is_read() -> (
    None
):
    import pickle

    wire = booking().model_dump(mode="json", by_alias=True)

    event = BookingEvent.from_wire(wire, booking_key="test:1", revision="r1", validate=False)

    assert "booking" not in event.__dict__  # nothing validated to send it
    assert event.booking_json() is wire
    assert event.booking == booking()  # validated when read, once
    assert event.booking is event.booking
    assert event.booking_json() is wire  # still the JSON it was made from
    fresh = BookingEvent.from_wire(wire, booking_key="test:1", revision="r1", validate=False)
    assert fresh == BookingEvent(booking=booking(), booking_key="test:1", revision="r1")
    # Every way of looking at one not read yet has the booking.
    unread = BookingEvent.from_wire(wire, booking_key="test:1", validate=False)
    assert unread.model_dump(mode="json", by_alias=True)["booking"] == wire
    unread = BookingEvent.from_wire(wire, booking_key="test:1", validate=False)
    assert "booking=" in repr(unread)
    unread = BookingEvent.from_wire(wire, booking_key="test:1", validate=False)
    assert dict(unread)["booking"] == booking()
    unread = BookingEvent.from_wire(wire, booking_key="test:1", validate=False)
    assert pickle.loads(pickle.dumps(unread)).booking == booking()
    unread = BookingEvent.from_wire(wire, booking_key="test:1", validate=False)
    assert json.loads(unread.model_dump_json(by_alias=True))["booking"] == wire
    # A copy with other fields still sends the JSON; one with another booking sends that one.
    unread = BookingEvent.from_wire(wire, booking_key="test:1", validate=False)
    copy = unread.model_copy(update={"revision": "r2"})
    assert copy.booking_json() is wire and copy.booking == booking()
    cancelled = cancelled_booking()
    replaced = unread.model_copy(update={"booking": cancelled})
    assert replaced.booking_json() == cancelled.model_dump(mode="json", by_alias=True)


def test_json_taken_as_valid_that_is_not_fails_when_its_booking_is_read() -> None:
    wire = {**booking().model_dump(mode="json", by_alias=True), "utcCreatedAt": "soon"}

    event = BookingEvent.from_wire(wire, booking_key="test:1", validate=False)

    with pytest.raises(ValidationError, match="utcCreatedAt"):
        _ = event.booking
    # Fields of the wrong type are never taken unvalidated.
    valid = booking().model_dump(mode="json", by_alias=True)
    with pytest.raises(ValidationError, match="booking_key"):
        BookingEvent.from_wire(valid, booking_key=1, validate=False)  # type: ignore[arg-type]


def test_the_checked_builders_refuse_what_octo_timestamps_cannot_hold() -> None:
    from datetime import date
    from zoneinfo import ZoneInfo

    from gateway.sources.translation import TranslationError, slot_json, utc_timestamp

    assert utc_timestamp("2024-05-01T12:00:00+02:00", "at") == "2024-05-01T10:00:00Z"
    with pytest.raises(TranslationError, match="at: '0999-05-01T10:00:00"):
        utc_timestamp("0999-05-01T10:00:00+00:00", "at")
    with pytest.raises(TranslationError, match=r"1890-01-01\.\.1890-01-02 in Europe/Paris"):
        slot_json(
            date(1890, 1, 1),
            date(1890, 1, 2),
            ZoneInfo("Europe/Paris"),
            vacancies=None,
            capacity=None,
            closed=False,
        )
