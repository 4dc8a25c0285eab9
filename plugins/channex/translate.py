"""Channex booking revisions and ARI rows -> OCTO bookings and availability (pure functions).

Choices where CONTRACT.md §6 is silent:

- Times: Channex sends naive UTC times. ``utcCreatedAt`` is the ``inserted_at`` of the first
  revision the gateway saw of the booking, kept in its room map for the booking's life (the
  contract's "first revision"; a booking first seen before room maps existed is dated by the
  first revision read since). ``utcUpdatedAt`` is the revision's ``updated_at`` when present, else
  ``received_at`` (when the gateway got the push), else ``inserted_at``. ``utcConfirmedAt`` is
  ``utcCreatedAt`` (OTA bookings arrive confirmed) and stays set once cancelled;
  ``utcCancelledAt`` is the ``inserted_at`` of the revision that cancelled the room (or dropped
  it), and stays that on later revisions.
- Rooms keep their uuid across revisions (see ``rooms.py``); a room a revision drops is sent
  once more, CANCELLED, with the dropping revision's booking-level fields.
- ``id`` is the booking's ``uuid`` (one per room). A room without ``room_type_id`` (Channex's
  unmapped-room bookings) gets productId "DEFAULT", like a missing ``rate_plan_id`` gets optionId
  "DEFAULT".
- A room with ``is_cancelled: true`` is CANCELLED even when the revision is only ``modified``.
- ``cancellation.refund``: NONE when a "Cancellation Fee" service covers the rooms' amount,
  PARTIAL when it covers less, FULL without one. ``reason`` is null (Channex gives none).
- ``cancellable`` is true while the booking is CONFIRMED, PENDING or ON_HOLD.
- Unit item ``i`` gets the contact of the room's ``guests[i]`` when Channex names it.
- Only ``stop_sell_manual`` closes a day. Channex sets ``stop_sell`` by itself whenever a day is
  sold out or its rate is 0 and asks subscribers to ignore it, so it changes nothing here: a
  sold-out day is SOLD_OUT, and a day with rooms left and a zero rate keeps its vacancies.
- ARI rows merge onto what is known for the slot (``previous``, then earlier rows of the same
  push): a row without ``availability`` keeps the known vacancies, one without
  ``stop_sell_manual`` keeps the known open/closed state. A slot never seen before starts at 0
  vacancies, open: so a lone manual stop-sell row shows CLOSED with 0 vacancies and a lone re-open
  row shows SOLD_OUT until Channex sends a count, which never advertises rooms nobody counted.
- A negative ``availability`` (overbooking) counts as 0 vacancies.

Card data (``guarantee``) is never read, and ``revision_attributes`` drops it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.plugin_api import (
    Availability,
    AvailabilityEvent,
    BookingEvent,
    DayKey,
    MappedRoom,
    Refund,
    RoomMap,
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

from .rooms import match_rooms, room_details, rooms_after

CHANNEX_STATUSES = {"new": "CONFIRMED", "modified": "CONFIRMED", "cancelled": "CANCELLED"}
# OCTO unit kind -> key in a Channex occupancy.
OCCUPANCY_KEYS = {"adult": "adults", "child": "children", "infant": "infants"}
# Channex's own ``stop_sell`` follows availability and rates by itself; only this flag closes a day.
MANUAL_STOP_SELL = "stop_sell_manual"


def revision_attributes(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of a booking revision, from any shape Channex shows one in.

    Accepts the ``GET /booking_revisions/{id}`` answer ``{"data": {"type", "id", "attributes"}}``,
    the booking message examples (``type: booking``, whose ``id`` is the booking id), a feed item
    ``{"type", "id", "attributes"}``, or the attributes themselves. The card (``guarantee``) is
    left out of the copy returned.
    """
    data = doc.get("data", doc)
    if not isinstance(data, Mapping):
        raise TranslationError("data: expected one booking revision object")
    attributes = data.get("attributes", data)
    if not isinstance(attributes, Mapping):
        raise TranslationError("data.attributes: expected an object")
    result = {key: value for key, value in attributes.items() if key != "guarantee"}
    if data.get("type") == "booking" and not result.get("booking_id"):
        result["booking_id"] = data.get("id")
    return result


@dataclass(frozen=True)
class RevisionBookings:
    """What one revision gives: its OCTO bookings, and the booking's room map after it."""

    events: list[BookingEvent]
    rooms: RoomMap


def bookings_from_revision(
    revision: Mapping[str, Any],
    settings: TranslationSettings,
    *,
    source: str = "channex",
    received_at: datetime | None = None,
    known: RoomMap | None = None,
) -> list[BookingEvent]:
    """One OCTO booking per room of the revision (and per room it dropped); none when
    status_map says IGNORE. ``known`` is the booking's room map before this revision."""
    return translate_revision(
        revision, settings, known, source=source, received_at=received_at
    ).events


def translate_revision(
    revision: Mapping[str, Any],
    settings: TranslationSettings,
    known: RoomMap | None,
    *,
    source: str = "channex",
    received_at: datetime | None = None,
) -> RevisionBookings:
    """The revision's bookings given the booking's room map before it (None: first seen).

    Each room keeps its slot (and so its uuid) across revisions; a room of the previous revision
    that this one drops is sent CANCELLED once. ``utcCreatedAt`` is the map's (the first
    revision's), ``utcCancelledAt`` the revision's that cancelled the room.
    """
    booking_id = text(revision.get("booking_id")) or text(revision.get("id"))
    if booking_id is None:
        raise TranslationError("booking_id: missing")
    inserted, updated_at = _times(revision, received_at)
    times = _Times(
        created=known.created_at if known and known.created_at else inserted,
        updated=updated_at,
    )
    whole_booking_cancelled = str(revision.get("status") or "") == "cancelled"
    before = {room.slot: room.details for room in known.rooms} if known else {}
    rooms = revision.get("rooms") or []
    if not isinstance(rooms, list) or not all(isinstance(room, Mapping) for room in rooms):
        raise TranslationError("rooms: expected a list of room objects")
    # Whether each room is cancelled now is part of what matches it (see ``match_rooms``).
    described = [
        room_details(
            room,
            revision,
            cancelled=bool(room.get("is_cancelled")) or whole_booking_cancelled,
            cancelled_at=None,
        )
        for room in rooms
    ]
    match = match_rooms(described, known)
    events: list[BookingEvent] = []
    listed: list[MappedRoom] = []
    for room, details, slot in zip(rooms, described, match.slots, strict=True):
        cancelled = bool(room.get("is_cancelled")) or whole_booking_cancelled
        if cancelled:
            earlier = before.get(slot, {})
            # The revision that cancelled the room dates it; later ones keep that time.
            details.update(
                cancelled=True,
                cancelled_at=earlier.get("cancelled_at") if earlier.get("cancelled") else inserted,
            )
        listed.append(MappedRoom(slot=slot, details=details))
        events += _room_event(revision, booking_id, slot, details, settings, source, times)
    for gone in match.dropped:
        if not gone.details.get("cancelled"):  # a room already sent cancelled is not sent again
            details = {**gone.details, "cancelled": True, "cancelled_at": inserted}
            events += _room_event(revision, booking_id, gone.slot, details, settings, source, times)
    version = revision_version(revision)
    if known is not None and known.version is not None:
        version = known.version if version is None else max(version, known.version)
    rooms_map = RoomMap(
        rooms=rooms_after(known, listed, match.dropped), created_at=times.created, version=version
    )
    return RevisionBookings(events=events, rooms=rooms_map)


def revision_version(revision: Mapping[str, Any]) -> datetime | None:
    """The revision's ``inserted_at`` as an instant: which of two revisions is newer."""
    inserted = text(revision.get("inserted_at"))
    return utc_instant(inserted, "inserted_at") if inserted else None


@dataclass(frozen=True)
class _Times:
    created: str  # utcCreatedAt (and utcConfirmedAt): the booking's first revision's
    updated: str  # utcUpdatedAt: this revision's


def _room_event(
    revision: Mapping[str, Any],
    booking_id: str,
    slot: int,
    room: Mapping[str, Any],
    settings: TranslationSettings,
    source: str,
    times: _Times,
) -> list[BookingEvent]:
    """The OCTO booking of one room (``room_details`` shape); [] when status_map says IGNORE."""
    pms_status = "cancelled" if room.get("cancelled") else str(revision.get("status") or "")
    status = booking_status(pms_status, CHANNEX_STATUSES, settings)
    if status is None:
        return []
    key = booking_key(source, booking_id, slot)
    arrival = parse_day(room.get("checkin_date"), "checkin_date")
    departure = parse_day(room.get("checkout_date"), "checkout_date")
    occupancy = room.get("occupancy") or {}
    counts = {
        kind: whole_number(occupancy.get(field) or 0, f"occupancy.{field}")
        for kind, field in OCCUPANCY_KEYS.items()
    }
    uuid = booking_uuid(source, booking_id, slot)
    stay = slot_json(arrival, departure, settings.zone, vacancies=None, capacity=None, closed=False)
    refund = _refund(revision)  # read whatever the status: an amount that isn't one is refused
    # Written as OCTO JSON, valid by construction (every value from the plugin API's checked
    # builders, of the type its key takes, or kept by this translator in the room map), so it is
    # not validated on the way out: the event sends this JSON as it is.
    octo = stay_booking_json(
        uuid=uuid,
        settings=settings,
        status=status,
        created_at=times.created,
        updated_at=times.updated,
        product_id=settings.product_id(text(room.get("room_type_id")) or "DEFAULT"),
        option_id=settings.option_id(text(room.get("rate_plan_id"))),
        stay=stay,
        contact=_contact(_object(revision.get("customer"))),
        unit_items=unit_items_json(
            counts,
            settings,
            key=key,
            status=status,
            contacts=[_contact(guest) for guest in room.get("guests") or []],
        ),
        supplier_reference=booking_id,
        reseller_reference=text(revision.get("ota_reservation_code")),
        notes=text(revision.get("notes")),
        refund=refund,
        cancelled_at=room.get("cancelled_at"),
    )
    return [BookingEvent.from_wire(octo, booking_key=key, validate=False)]


def _times(revision: Mapping[str, Any], received_at: datetime | None) -> tuple[str, str]:
    """(this revision's time, utcUpdatedAt); see the module docstring."""
    received = utc_timestamp(received_at.isoformat(), "received_at") if received_at else None
    inserted = text(revision.get("inserted_at"))
    created = utc_timestamp(inserted, "inserted_at") if inserted else received
    if created is None:
        raise TranslationError("inserted_at: missing")
    updated = text(revision.get("updated_at"))
    return created, utc_timestamp(updated, "updated_at") if updated else received or created


def _refund(revision: Mapping[str, Any]) -> Refund:
    fees = [
        _money(service.get("total_price"))
        for service in _objects(revision.get("services"))
        if str(service.get("type") or "").lower() == "cancellation fee"
    ]
    if not fees:
        return "FULL"
    rooms_total = sum(
        (_money(room.get("amount")) for room in revision.get("rooms") or []), Decimal(0)
    )
    return "NONE" if sum(fees) >= rooms_total else "PARTIAL"


def _money(value: Any) -> Decimal:
    try:
        amount = Decimal(str(value or 0))
    except InvalidOperation:
        raise TranslationError(f"not an amount: {value!r}") from None
    if not amount.is_finite():  # NaN can't even be compared
        raise TranslationError(f"not an amount: {value!r}")
    return amount


def _object(value: Any) -> Mapping[str, Any]:
    """A field that should hold an object; anything else counts as missing."""
    return value if isinstance(value, Mapping) else {}


def _objects(value: Any) -> list[Mapping[str, Any]]:
    """The objects in a field that should hold a list of them; anything else is left out."""
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _contact(person: Mapping[str, Any]) -> dict[str, Any]:
    """A Channex customer or guest (``name``, ``surname``, ``mail``, ...) as an OCTO contact."""
    first, last = text(person.get("name")), text(person.get("surname"))
    email = text(person.get("mail"))
    language = text(person.get("language"))
    return contact_json(
        full_name=full_name(first, last),
        first_name=first,
        last_name=last,
        email_address=email if email and "@" in email else None,
        phone_number=text(person.get("phone")),
        locales=[language] if language else [],
        postal_code=text(person.get("zip")),
        country=country_code(person.get("country")),
    )


# What is known about one product/option/day while a push is read: vacancies, capacity, closed
# (a tuple: a frozen dataclass per row and day cost more than the rest of the row's reading).
_Slot = tuple[int, int | None, bool]
NEW_SLOT: _Slot = (0, None, False)
# One ARI row the translation reads: its number, the row, its productId and optionId, and its
# days (each with its "YYYY-MM-DD").
AriRow = tuple[int, Mapping[str, Any], str, str, list[tuple[date, str]]]


def _known(availability: Availability | Mapping[str, Any] | None) -> _Slot:
    """A slot as last sent: the model, or its OCTO JSON (``known_availability_json``)."""
    if availability is None:
        return NEW_SLOT
    if isinstance(availability, Availability):
        return (availability.vacancies or 0, availability.capacity, availability.status == "CLOSED")
    return (
        availability.get("vacancies") or 0,
        availability.get("capacity"),
        availability.get("status") == "CLOSED",
    )


def availability_from_ari(
    rows: list[dict[str, Any]],
    settings: TranslationSettings,
    previous: Mapping[DayKey, Availability],
) -> list[AvailabilityEvent]:
    """One event per product, option and day the rows touch, holding the last row's result.

    ``previous`` is the last availability sent per (productId, optionId, "YYYY-MM-DD"). Rows may
    name one ``date`` or an inclusive ``date_from``/``date_to`` range. Rows with neither
    ``availability`` nor ``stop_sell_manual`` (rates, restrictions, Channex's automatic
    ``stop_sell``) are skipped.
    """
    return ari_events(ari_rows(rows, settings)[0], settings, previous)


def ari_rows(
    rows: list[dict[str, Any]],
    settings: TranslationSettings,
    *,
    max_row_days: int | None = None,
    max_slots: int | None = None,
) -> tuple[list[AriRow], list[DayKey]]:
    """The rows that change availability, each read once, and every (productId, optionId,
    "YYYY-MM-DD") they touch, once, in the order first touched (the slots to look up; the
    translation takes the rows). Past ``max_row_days`` days in one row, or ``max_slots``
    product/option/days in all, the push is refused rather than expanded further."""
    read: list[AriRow] = []
    keys: dict[DayKey, None] = {}
    for number, row in enumerate(rows):
        if row.get("availability") is None and not manual_stop_sell_given(row):
            continue
        room_type = text(row.get("room_type_id"))
        if room_type is None:
            raise TranslationError(f"payload[{number}].room_type_id: missing")
        product = settings.product_id(room_type)
        option = settings.option_id(text(row.get("rate_plan_id")))
        if row.get("date") is not None:
            day = parse_day(row["date"], f"payload[{number}].date")
            row_days = [(day, day.isoformat())]
        else:
            first = parse_day(row.get("date_from"), f"payload[{number}].date_from")
            to = row.get("date_to")
            last = parse_day(to, f"payload[{number}].date_to") if to else first
            if max_row_days is not None and (last - first).days >= max_row_days:
                raise TranslationError(
                    f"payload[{number}]: date_from..date_to spans more than {max_row_days} days"
                )
            row_days = [(day, day.isoformat()) for day in days(first, last)]
        for _, iso in row_days:
            keys[(product, option, iso)] = None
        if max_slots is not None and len(keys) > max_slots:
            raise TranslationError(
                f"payload: more than {max_slots} product/option/days in one push"
            )
        read.append((number, row, product, option, row_days))
    return read, list(keys)


def ari_events(
    read: list[AriRow],
    settings: TranslationSettings,
    previous: Mapping[DayKey, Availability] | Mapping[DayKey, Mapping[str, Any]],
) -> list[AvailabilityEvent]:
    """``availability_from_ari`` of rows read by ``ari_rows``; ``previous`` as models or as
    their OCTO JSON."""
    slots: dict[DayKey, tuple[_Slot, date]] = {}
    for number, row, product, option, row_days in read:
        for day, iso in row_days:
            key = (product, option, iso)
            found = slots.get(key)
            known = found[0] if found is not None else _known(previous.get(key))
            slots[key] = (_apply(known, row, number), day)
    return [
        day_event(
            product,
            option,
            day,
            settings,
            vacancies=slot[0],
            capacity=slot[1],
            closed=slot[2],
        )
        for (product, option, _), (slot, day) in slots.items()
    ]


def manual_stop_sell_given(row: Mapping[str, Any]) -> bool:
    """Whether the row opens or closes the day (``stop_sell`` alone never does)."""
    return row.get(MANUAL_STOP_SELL) is not None


def _apply(slot: _Slot, row: Mapping[str, Any], number: int) -> _Slot:
    vacancies, capacity, closed = slot
    if row.get("availability") is not None:
        available = whole_number(row["availability"], f"payload[{number}].availability")
        booked = row.get("booked")
        vacancies = max(available, 0)
        capacity = None
        if booked is not None:
            capacity = max(available + whole_number(booked, f"payload[{number}].booked"), 0)
    if manual_stop_sell_given(row):
        closed = bool(row[MANUAL_STOP_SELL])
    return (vacancies, capacity, closed)
