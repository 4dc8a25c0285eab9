"""Building blocks shared by the source translators: times, day slots, availability status."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from gateway.models import trusted
from gateway.octo import (
    BOOKING_NAMESPACE,
    Availability,
    AvailabilityEvent,
    AvailabilityStatus,
    BookingCancellation,
    BookingStatus,
    Contact,
    Refund,
    UnitItem,
    uuid5_text,
    wired_availability_event,
)
from gateway.sources.settings import BOOKING_STATUSES, IGNORE, TranslationSettings

DayKey = tuple[str, str, str]
# Statuses a booking only reaches after it was confirmed, so it keeps utcConfirmedAt.
WAS_CONFIRMED: frozenset[str] = frozenset({"CONFIRMED", "CANCELLED", "REDEEMED"})
STILL_CANCELLABLE: frozenset[str] = frozenset({"CONFIRMED", "PENDING", "ON_HOLD"})


class TranslationError(ValueError):
    """The PMS data can't be turned into OCTO; the message says which field is wrong."""


def utc_instant(value: Any, field: str) -> datetime:
    """A PMS timestamp as an aware UTC datetime (one without an offset is UTC); what
    ``BookingEvent.version`` takes, so versions compare as instants and never as text."""
    try:
        moment = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise TranslationError(f"{field}: not a timestamp: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def utc_timestamp(value: str, field: str) -> str:
    """A PMS timestamp as OCTO UTC (``2024-05-01T10:00:00Z``); one without an offset is UTC."""
    moment = utc_instant(value, field)
    if isinstance(value, str) and OCTO_UTC.fullmatch(value):
        # Already written as OCTO writes it (Beds24 does): strftime would give the same text
        # back, at 3-5 µs a call, twice per booking.
        return value
    written = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if len(written) != UTC_TIMESTAMP_LENGTH:
        # Before the year 1000 strftime writes fewer digits than OCTO's pattern has: refused
        # here, so what this returns is always a valid OCTO UTC timestamp.
        raise TranslationError(f"{field}: {value!r} cannot be written as an OCTO UTC timestamp")
    return written


# "2024-05-01T10:00:00Z"
UTC_TIMESTAMP_LENGTH = 20


# A UTC timestamp as OCTO writes it, from year 1000 on (strftime writes no leading zeros).
OCTO_UTC = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def whole_number(value: Any, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TranslationError(f"{field}: not a whole number: {value!r}") from None


def parse_day(value: Any, field: str) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise TranslationError(f"{field}: not a date: {value!r}") from None


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone)


def availability_slot(
    start: date,
    end: date,
    zone: ZoneInfo,
    *,
    vacancies: int | None,
    capacity: int | None,
    closed: bool,
) -> Availability:
    """An all-day availability from ``start`` 00:00 to ``end`` 00:00 local time.

    ``vacancies`` None (a booking's stay, where the count is unknown) is shown as available.
    """
    begins, ends, cutoff = slot_times(start, end, zone)
    status = availability_status(vacancies, capacity, closed=closed)
    wire = _slot_wire(
        begins, ends, cutoff, vacancies != 0 and not closed, status, vacancies, capacity
    )
    values = availability_fields(wire)
    if len(begins) == len(ends) == LOCAL_TIMESTAMP_LENGTH:
        # Every value is made here in the model's types: built without validation (a burst of
        # 1,800 ARI rows builds 1,800). Only a historical offset with seconds ("+00:09:21") has
        # another length; validation refuses it, as OCTO's pattern does.
        return trusted(Availability, values)
    return Availability.model_validate(values)


# "2027-01-01T00:00:00+01:00"
LOCAL_TIMESTAMP_LENGTH = 25


def slot_json(
    start: date,
    end: date,
    zone: ZoneInfo,
    *,
    vacancies: int | None,
    capacity: int | None,
    closed: bool,
) -> dict[str, Any]:
    """``availability_slot``'s availability as OCTO JSON (what its ``model_dump(mode="json",
    by_alias=True)`` writes), for ``BookingEvent.from_wire``. Valid by construction:
    ``TranslationError`` for a stay OCTO's timestamp patterns cannot hold (a historical offset
    with seconds, such as Paris's +00:09:21 before 1911, or a year before 1000)."""
    begins, ends, cutoff = slot_times(start, end, zone)
    if not (
        len(begins) == len(ends) == LOCAL_TIMESTAMP_LENGTH and len(cutoff) == UTC_TIMESTAMP_LENGTH
    ):
        raise TranslationError(
            f"the stay {start}..{end} in {zone.key} cannot be written as OCTO timestamps"
        )
    status = availability_status(vacancies, capacity, closed=closed)
    return _slot_wire(
        begins, ends, cutoff, vacancies != 0 and not closed, status, vacancies, capacity
    )


def _slot_wire(
    begins: str,
    ends: str,
    cutoff: str,
    available: bool,
    status: AvailabilityStatus,
    vacancies: int | None,
    capacity: int | None,
) -> dict[str, Any]:
    """An all-day availability as OCTO JSON, in the model's key order (its ``model_dump``)."""
    return {
        "id": begins,
        "localDateTimeStart": begins,
        "localDateTimeEnd": ends,
        "utcCutoffAt": cutoff,
        "allDay": True,
        "available": available,
        "status": status,
        "vacancies": vacancies,
        "capacity": capacity,
        "maxUnits": None,
        "openingHours": [],
    }


@functools.lru_cache(maxsize=4096)
def slot_times(start: date, end: date, zone: ZoneInfo) -> tuple[str, str, str]:
    """A slot's local start and end and its UTC cutoff, as OCTO writes them. Kept for the last
    few thousand slots: working them out (two local midnights through the zone's rules, a UTC
    conversion, two isoformats and a strftime) was most of ``availability_slot``, and the
    stays and days pushes name repeat (an ARI burst names each day once per room type)."""
    local_start = local_midnight(start, zone)
    return (
        local_start.isoformat(),
        local_midnight(end, zone).isoformat(),
        local_start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def availability_status(
    vacancies: int | None, capacity: int | None, *, closed: bool
) -> AvailabilityStatus:
    if closed:
        return "CLOSED"
    if vacancies == 0:
        return "SOLD_OUT"
    if vacancies is not None and capacity and vacancies * 2 < capacity:
        return "LIMITED"
    return "AVAILABLE"


def day_event(
    product_id: str,
    option_id: str,
    day: date,
    settings: TranslationSettings,
    *,
    vacancies: int,
    capacity: int | None,
    closed: bool,
) -> AvailabilityEvent:
    """The availability of one whole day, as an event. Built with its OCTO JSON and without
    validation (every value is made here, or checked to be of the model's type), so the event
    sends that JSON instead of a dump: a day's event was 13 µs, one per ARI row and day."""
    begins, ends, cutoff = slot_times(day, day + ONE_DAY, settings.zone)
    available = vacancies != 0 and not closed
    status = availability_status(vacancies, capacity, closed=closed)
    if not (
        len(begins) == len(ends) == LOCAL_TIMESTAMP_LENGTH
        and type(product_id) is str
        and type(option_id) is str
    ):
        # A historical offset with seconds ("+00:09:21"), refused as OCTO's pattern does, or ids
        # that are not text: the models say which.
        slot = availability_slot(
            day, day + ONE_DAY, settings.zone, vacancies=vacancies, capacity=capacity, closed=closed
        )
        return AvailabilityEvent(product_id=product_id, option_id=option_id, availability=slot)
    wire = _slot_wire(begins, ends, cutoff, available, status, vacancies, capacity)
    return wired_availability_event(product_id, option_id, availability_fields(wire), wire)


ONE_DAY = timedelta(days=1)


# An availability's OCTO JSON keys, in the model's order, and its field names.
AVAILABILITY_WIRE = tuple(
    (field.alias or name, name) for name, field in Availability.model_fields.items()
)


def stored_availability(wire: Mapping[str, Any]) -> Availability:
    """An availability the gateway sent (``availability_state``), back as the model. Written by
    the gateway from a model, so one with exactly the model's keys and no opening hours (all the
    gateway sends) is taken as it is (5-6 -> 1.5 µs); anything else is validated."""
    if len(wire) == len(AVAILABILITY_WIRE) and wire.get("openingHours") == []:
        try:
            return trusted(Availability, availability_fields(wire))
        except KeyError:
            pass
    return Availability.model_validate(wire)


def availability_fields(wire: Mapping[str, Any]) -> dict[str, Any]:
    """An availability's field values from its OCTO JSON, which must hold every key
    (``KeyError`` otherwise); its opening hours a list of its own, not shared with ``wire``."""
    values = {name: wire[alias] for alias, name in AVAILABILITY_WIRE}
    values["opening_hours"] = list(values["opening_hours"])
    return values


def days(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last``, both included."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def booking_status(
    pms_status: str, defaults: Mapping[str, str], settings: TranslationSettings
) -> BookingStatus | None:
    """The OCTO status for a PMS status; None when the booking must not be sent (IGNORE)."""
    status = settings.status(pms_status, defaults)
    if status is None:
        raise TranslationError(f"status: unknown PMS status {pms_status!r}; map it in status_map")
    if status == IGNORE:
        return None
    if status not in BOOKING_STATUSES:
        raise TranslationError(f"status: {status!r} is not an OCTO booking status")
    return cast(BookingStatus, status)


def cancellation(
    status: BookingStatus, refund: Refund, cancelled_at: str
) -> BookingCancellation | None:
    if status != "CANCELLED":
        return None
    return BookingCancellation(refund=refund, reason=None, utc_cancelled_at=cancelled_at)


def confirmed_at(status: BookingStatus, created_at: str) -> str | None:
    """PMS bookings are confirmed when made; one still pending or on hold has no such time."""
    return created_at if status in WAS_CONFIRMED else None


def unit_items(
    counts: Mapping[str, int],
    settings: TranslationSettings,
    *,
    key: str,
    status: BookingStatus,
    contacts: list[Contact],
) -> list[UnitItem]:
    """One unit item per guest, adults first; ``contacts[i]`` (when given) is guest i's."""
    return [
        UnitItem(
            uuid=uuid,
            unit_id=settings.unit_id(kind),
            status=status,
            contact=contacts[index] if index < len(contacts) else Contact(),
        )
        for index, (uuid, kind) in enumerate(_guests(counts, key))
    ]


def unit_items_json(
    counts: Mapping[str, int],
    settings: TranslationSettings,
    *,
    key: str,
    status: BookingStatus,
    contacts: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """``unit_items`` as OCTO JSON, for ``BookingEvent.from_wire``; ``contacts[i]`` (when given,
    made by ``contact_json``) is guest i's."""
    given = contacts or []
    return [
        {
            "uuid": uuid,
            "resellerReference": None,
            "supplierReference": None,
            "unitId": settings.unit_id(kind),
            "status": status,
            "utcRedeemedAt": None,
            "contact": given[index] if index < len(given) else contact_json(),
            "ticket": None,
        }
        for index, (uuid, kind) in enumerate(_guests(counts, key))
    ]


def _guests(counts: Mapping[str, int], key: str) -> list[tuple[str, str]]:
    """Each guest's unit item uuid and unit kind, adults first (``counts`` in its order)."""
    kinds = [kind for kind, count in counts.items() for _ in range(max(count, 0))]
    return [
        (uuid5_text(BOOKING_NAMESPACE, f"{key}:unit:{index}"), kind)
        for index, kind in enumerate(kinds)
    ]


def contact_json(
    *,
    full_name: str | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    email_address: str | None = None,
    phone_number: str | None = None,
    locales: list[str] | None = None,
    postal_code: str | None = None,
    country: str | None = None,
    notes: str | None = None,
) -> dict[str, Any]:
    """A ``Contact`` as OCTO JSON, unvalidated: for ``BookingEvent.from_wire``."""
    return {
        "fullName": full_name,
        "firstName": first_name,
        "lastName": last_name,
        "emailAddress": email_address,
        "phoneNumber": phone_number,
        "locales": [] if locales is None else locales,
        "postalCode": postal_code,
        "country": country,
        "notes": notes,
    }


def stay_booking_json(
    *,
    uuid: str,
    settings: TranslationSettings,
    status: BookingStatus,
    created_at: str,
    updated_at: str,
    product_id: str,
    option_id: str,
    stay: dict[str, Any],
    contact: dict[str, Any],
    unit_items: list[dict[str, Any]],
    supplier_reference: str,
    reseller_reference: str | None = None,
    notes: str | None = None,
    refund: Refund = "FULL",
    cancelled_at: str | None = None,
) -> dict[str, Any]:
    """A PMS stay's OCTO ``Booking`` as JSON, in the model's key order, for
    ``BookingEvent.from_wire``: what every PMS booking shares is written once here (confirmed
    when made, cancellable until cancelled, no voucher). ``stay`` from ``slot_json``, ``contact``
    from ``contact_json``, ``unit_items`` from ``unit_items_json``; a cancelled booking's
    cancellation time is ``cancelled_at``, else ``updated_at``."""
    return {
        "id": uuid,
        "uuid": uuid,
        "testMode": settings.test_mode,
        "resellerReference": reseller_reference,
        "supplierReference": supplier_reference,
        "status": status,
        "utcCreatedAt": created_at,
        "utcUpdatedAt": updated_at,
        "utcExpiresAt": None,
        "utcRedeemedAt": None,
        "utcConfirmedAt": confirmed_at(status, created_at),
        "productId": product_id,
        "optionId": option_id,
        "cancellable": status in STILL_CANCELLABLE,
        "cancellation": (
            {"refund": refund, "reason": None, "utcCancelledAt": cancelled_at or updated_at}
            if status == "CANCELLED"
            else None
        ),
        "freesale": False,
        "availabilityId": stay["id"],
        "availability": stay,
        "contact": contact,
        "notes": notes,
        "deliveryMethods": [],
        "voucher": None,
        "unitItems": unit_items,
    }


def text(value: Any) -> str | None:
    """A PMS text field: None for missing or blank."""
    if value is None:
        return None
    stripped = str(value).strip()
    return stripped or None


def full_name(first: str | None, last: str | None) -> str | None:
    return " ".join(part for part in (first, last) if part) or None


def country_code(value: Any) -> str | None:
    code = text(value)
    return code.upper() if code else None
