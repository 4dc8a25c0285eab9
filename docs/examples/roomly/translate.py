"""Roomly reservations and availability days -> OCTO (pure functions, no I/O).

Roomly is a made-up PMS, the subject of the tutorial in docs/plugin_hooks.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.plugin_api import (
    STILL_CANCELLABLE,
    AvailabilityEvent,
    Booking,
    BookingEvent,
    Contact,
    TranslationError,
    TranslationSettings,
    availability_slot,
    booking_key,
    booking_status,
    booking_uuid,
    cancellation,
    confirmed_at,
    country_code,
    day_event,
    full_name,
    parse_day,
    text,
    unit_items,
    utc_instant,
    utc_timestamp,
    whole_number,
)

# Roomly status -> OCTO status; an operator's status_map overrides these.
ROOMLY_STATUSES = {"confirmed": "CONFIRMED", "tentative": "ON_HOLD", "cancelled": "CANCELLED"}


def booking_from_reservation(
    reservation: Mapping[str, Any], settings: TranslationSettings
) -> BookingEvent | None:
    """The OCTO booking of one Roomly reservation; None when its status is mapped to IGNORE."""
    status = booking_status(text(reservation.get("status")) or "", ROOMLY_STATUSES, settings)
    if status is None:
        return None
    reservation_id = text(reservation.get("id"))
    if reservation_id is None:
        raise TranslationError("reservation.id: missing")
    key = booking_key("roomly", reservation_id)
    created = text(reservation.get("created_at"))
    if created is None:
        raise TranslationError("reservation.created_at: missing")
    created_at = utc_timestamp(created, "reservation.created_at")
    updated = text(reservation.get("updated_at")) or created
    updated_at = utc_timestamp(updated, "reservation.updated_at")
    cancelled = text(reservation.get("cancelled_at"))
    stay = availability_slot(
        parse_day(reservation.get("check_in"), "reservation.check_in"),
        parse_day(reservation.get("check_out"), "reservation.check_out"),
        settings.zone,
        vacancies=None,
        capacity=None,
        closed=False,
    )
    guests = {
        "adult": whole_number(reservation.get("adults") or 0, "reservation.adults"),
        "child": whole_number(reservation.get("children") or 0, "reservation.children"),
    }
    booking = Booking(
        id=booking_uuid("roomly", reservation_id),
        uuid=booking_uuid("roomly", reservation_id),
        test_mode=settings.test_mode,
        reseller_reference=text(reservation.get("channel_reference")),
        supplier_reference=reservation_id,
        status=status,
        utc_created_at=created_at,
        utc_updated_at=updated_at,
        utc_confirmed_at=confirmed_at(status, created_at),
        product_id=settings.product_id(text(reservation.get("room_type_id")) or "DEFAULT"),
        option_id=settings.option_id(text(reservation.get("rate_plan_id"))),
        cancellable=status in STILL_CANCELLABLE,
        cancellation=cancellation(
            status,
            "FULL",
            utc_timestamp(cancelled, "reservation.cancelled_at") if cancelled else updated_at,
        ),
        availability_id=stay.id,
        availability=stay,
        contact=_contact(reservation.get("guest") or {}),
        notes=text(reservation.get("notes")),
        unit_items=unit_items(guests, settings, key=key, status=status, contacts=[]),
    )
    return BookingEvent(
        booking=booking,
        booking_key=key,
        # Roomly numbers every change of a reservation: the same version is never sent twice,
        # and an older one arriving late is dropped.
        revision=f"{reservation_id}@{reservation.get('version')}",
        version=utc_instant(updated, "reservation.updated_at"),
    )


def _contact(guest: Mapping[str, Any]) -> Contact:
    first, last = text(guest.get("first_name")), text(guest.get("last_name"))
    language = text(guest.get("language"))
    return Contact(
        full_name=full_name(first, last),
        first_name=first,
        last_name=last,
        email_address=text(guest.get("email")),
        phone_number=text(guest.get("phone")),
        locales=[language] if language else [],
        country=country_code(guest.get("country")),
    )


def availability_from_days(
    room_type: str, days: list[Mapping[str, Any]], settings: TranslationSettings
) -> list[AvailabilityEvent]:
    """One availability_update per day of an ``availability.changed`` push."""
    product = settings.product_id(room_type)
    events = []
    for number, day in enumerate(days):
        where = f"days[{number}]"
        events.append(
            day_event(
                product,
                "DEFAULT",
                parse_day(day.get("date"), f"{where}.date"),
                settings,
                vacancies=max(whole_number(day.get("available"), f"{where}.available"), 0),
                capacity=whole_number(day["total"], f"{where}.total") if "total" in day else None,
                closed=bool(day.get("closed")),
            )
        )
    return events
