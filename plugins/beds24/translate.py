"""Beds24 bookings and inventory calendars -> OCTO bookings and availability (pure functions).

``booking`` is a Beds24 API v2 booking object: the ``booking`` of a v2 webhook item, or an item
of ``data`` in the ``GET /bookings?id=N`` answer read after a v1 push.

Choices where CONTRACT.md §6 is silent:

- Times: ``utcCreatedAt`` is ``bookingTime`` (else ``modifiedTime``); ``utcUpdatedAt`` is
  ``modifiedTime`` (else ``utcCreatedAt``); ``utcConfirmedAt`` is ``utcCreatedAt`` for confirmed
  and cancelled bookings, null for requests and inquiries; ``utcCancelledAt`` is ``cancelTime``,
  else ``utcUpdatedAt`` (of the version that cancelled: the store keeps the first one sent while
  the booking stays cancelled). Beds24 writes UTC, with or without the ``Z``.
- ``id`` is the booking's ``uuid``.
- ``cancellation.refund`` is FULL and ``reason`` null: Beds24 says nothing about either.
- ``cancellable`` is true while the booking is CONFIRMED, PENDING or ON_HOLD.
- Statuses are looked up lower-cased, so ``status_map`` keys are written in lower case.
- ``country2`` is upper-cased; a phone falls back to ``mobile``.
- Calendar: a range without ``numAvail`` says nothing about vacancies and is skipped; where
  ranges overlap, the later one wins for the days they share.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from gateway.plugin_api import (
    IGNORE,
    AvailabilityEvent,
    BookingEvent,
    TranslationError,
    TranslationSettings,
    booking_key,
    booking_status,
    booking_uuid,
    contact_json,
    country_code,
    day_event,
    days,
    full_name,
    parse_day,
    slot_json,
    stay_booking_json,
    text,
    unit_items_json,
    utc_instant,
    utc_timestamp,
    whole_number,
)

BEDS24_STATUSES = {
    "confirmed": "CONFIRMED",
    "new": "CONFIRMED",
    "request": "PENDING",
    "inquiry": "PENDING",
    "cancelled": "CANCELLED",
    "black": IGNORE,  # an owner block, not a guest booking
}
# OCTO unit kind -> Beds24 booking field.
GUEST_COUNTS = {"adult": "numAdult", "child": "numChild"}


def booking_from_beds24(
    booking: Mapping[str, Any], settings: TranslationSettings, *, source: str = "beds24"
) -> BookingEvent | None:
    """The OCTO booking for a Beds24 booking, with its revision (``id@modifiedTime``) and
    version (``modifiedTime`` as an instant); None for owner blocks or an IGNOREd status."""
    status = booking_status(str(booking.get("status") or "").lower(), BEDS24_STATUSES, settings)
    if status is None:
        return None
    booking_id = text(booking.get("id"))
    if booking_id is None:
        raise TranslationError("id: missing")
    key = booking_key(source, booking_id)
    created_at, updated_at = _times(booking)
    stay = slot_json(
        parse_day(booking.get("arrival"), "arrival"),
        parse_day(booking.get("departure"), "departure"),
        settings.zone,
        vacancies=None,
        capacity=None,
        closed=False,
    )
    cancelled = text(booking.get("cancelTime"))
    cancelled_at = utc_timestamp(cancelled, "cancelTime") if cancelled else updated_at
    offer = text(booking.get("offerId"))
    counts = {
        kind: whole_number(booking.get(field) or 0, field) for kind, field in GUEST_COUNTS.items()
    }
    uuid = booking_uuid(source, booking_id)
    # Written as OCTO JSON, valid by construction (every value from the plugin API's checked
    # builders, or of the type its key takes), so it is not validated on the way out: the event
    # sends this JSON as it is, and validates it only if its ``booking`` is read.
    octo = stay_booking_json(
        uuid=uuid,
        settings=settings,
        status=status,
        created_at=created_at,
        updated_at=updated_at,
        product_id=settings.product_id(text(booking.get("roomId")) or "DEFAULT"),
        option_id=settings.option_id(offer),
        stay=stay,
        contact=_contact(booking),
        unit_items=unit_items_json(counts, settings, key=key, status=status),
        supplier_reference=booking_id,
        reseller_reference=text(booking.get("apiReference")),
        notes=text(booking.get("comments")),
        cancelled_at=cancelled_at,
    )
    modified = text(booking.get("modifiedTime"))
    return BookingEvent.from_wire(
        octo,
        booking_key=key,
        revision=f"{booking.get('id')}@{booking.get('modifiedTime')}",
        # An instant: Beds24 writes times with and without fractions and offsets.
        version=utc_instant(modified, "modifiedTime") if modified else None,
        validate=False,
    )


def _times(booking: Mapping[str, Any]) -> tuple[str, str]:
    """(utcCreatedAt, utcUpdatedAt); see the module docstring."""
    booked = text(booking.get("bookingTime"))
    modified = text(booking.get("modifiedTime"))
    created = booked or modified
    if created is None:
        raise TranslationError("bookingTime: missing")
    created_at = utc_timestamp(created, "bookingTime")
    return created_at, utc_timestamp(modified, "modifiedTime") if modified else created_at


def _contact(booking: Mapping[str, Any]) -> dict[str, Any]:
    first, last = text(booking.get("firstName")), text(booking.get("lastName"))
    email = text(booking.get("email"))
    language = text(booking.get("lang"))
    return contact_json(
        full_name=full_name(first, last),
        first_name=first,
        last_name=last,
        email_address=email if email and "@" in email else None,
        phone_number=text(booking.get("phone")) or text(booking.get("mobile")),
        locales=[language] if language else [],
        postal_code=text(booking.get("postcode")),
        country=country_code(booking.get("country2")),
    )


def availability_from_calendar(
    items: list[dict[str, Any]],
    settings: TranslationSettings,
    start: date,
    end: date,
) -> list[AvailabilityEvent]:
    """One event per room and day within ``start``..``end`` (both included) the calendar covers.

    ``items`` is the ``data`` of ``GET /inventory/rooms/calendar`` read with includeNumAvail and
    includeOverride: ``[{"roomId", "calendar": [{"from", "to", "numAvail", "override"}]}]``.
    Events come room by room, days in order.
    """
    events: list[AvailabilityEvent] = []
    for number, item in enumerate(items):
        room = text(item.get("roomId"))
        if room is None:
            raise TranslationError(f"data[{number}].roomId: missing")
        product = settings.product_id(room)
        by_day: dict[date, AvailabilityEvent] = {}
        for entry in item.get("calendar") or []:
            if entry.get("numAvail") is None:
                continue
            vacancies = max(whole_number(entry["numAvail"], f"data[{number}].numAvail"), 0)
            closed = entry.get("override") == "blackout"
            for day in _range_days(entry, start, end, number):
                by_day[day] = day_event(
                    product,
                    "DEFAULT",
                    day,
                    settings,
                    vacancies=vacancies,
                    capacity=None,
                    closed=closed,
                )
        events.extend(by_day[day] for day in sorted(by_day))
    return events


def _range_days(entry: Mapping[str, Any], start: date, end: date, number: int) -> list[date]:
    first = parse_day(entry.get("from"), f"data[{number}].calendar.from")
    last = parse_day(entry.get("to") or entry.get("from"), f"data[{number}].calendar.to")
    return days(max(first, start), min(last, end))
