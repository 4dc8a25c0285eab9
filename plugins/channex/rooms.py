"""Which room of a Channex booking revision is which room of the previous revision.

CONTRACT §6, "Channex rooms across revisions": a room is the same room as one of the previous
revision when their ``booking_room_id`` match; failing that, when room type, rate plan, check-in and
check-out match; failing that, the remaining rooms pair up in order. In both fallbacks a room the
previous revision had cancelled pairs only with a room cancelled now (cancelled ones pair up in
order first), so a CANCELLED uuid never comes back as another, live room. Each room keeps its slot (its
uuid derives from it) for the life of the booking; a new room gets a slot the booking never had, so
a uuid never passes from one room to another. Booking.com changes ``booking_room_id`` between
revisions (Channex's own examples do), which is what the fallbacks are for.

A booking seen for the first time numbers its rooms in order (slot = index), as the gateway always
has, so the uuids already sent for such bookings stay the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.plugin_api import MappedRoom, RoomMap, text

# What makes two rooms "the same stay" when their booking_room_id doesn't say.
STAY_FIELDS = ("room_type_id", "rate_plan_id", "checkin_date", "checkout_date")
# The guest fields the translator reads; a room's details keep no others.
GUEST_FIELDS = ("name", "surname", "mail", "phone", "language", "zip", "country")


@dataclass(frozen=True)
class RoomMatch:
    """The slot of each room of the revision (in order), and the previous revision's rooms that
    no room of this one matches (dropped from the booking)."""

    slots: list[int]
    dropped: list[MappedRoom]


def room_details(
    room: Mapping[str, Any],
    revision: Mapping[str, Any],
    *,
    cancelled: bool,
    cancelled_at: str | None,
) -> dict[str, Any]:
    """A room as the map keeps it: what recognises it next time and what sends it again (Channex
    field names, the stay resolved against the revision's dates). No card data, no meta."""
    occupancy = room.get("occupancy") or revision.get("occupancy") or {}
    guests = room.get("guests")
    guests = guests if isinstance(guests, list) else []
    return {
        "booking_room_id": text(room.get("booking_room_id")),
        "room_type_id": text(room.get("room_type_id")),
        "rate_plan_id": text(room.get("rate_plan_id")),
        "checkin_date": text(room.get("checkin_date") or revision.get("arrival_date")),
        "checkout_date": text(room.get("checkout_date") or revision.get("departure_date")),
        "occupancy": dict(occupancy) if isinstance(occupancy, Mapping) else {},
        "guests": [
            {key: guest.get(key) for key in GUEST_FIELDS if guest.get(key) is not None}
            for guest in guests
            if isinstance(guest, Mapping)
        ],
        "amount": room.get("amount"),
        "cancelled": cancelled,
        "cancelled_at": cancelled_at,
    }


def match_rooms(rooms: Sequence[Mapping[str, Any]], known: RoomMap | None) -> RoomMatch:
    """Pair ``rooms`` (details, as ``room_details`` gives them) with the rooms ``known`` lists."""
    if known is None:
        return RoomMatch(slots=list(range(len(rooms))), dropped=[])
    free = [room for room in known.rooms if room.listed]
    chosen: dict[int, MappedRoom] = {}

    def pair(index: int, same: Any) -> None:
        found = next((previous for previous in free if same(previous.details)), None)
        if found is not None:
            chosen[index] = found
            free.remove(found)

    for index, room in enumerate(rooms):
        room_id = room.get("booking_room_id")
        if room_id:
            pair(index, lambda details, room_id=room_id: details.get("booking_room_id") == room_id)
    # Past booking_room_id, a room the previous revision had cancelled is only ever a room
    # cancelled now: a live room taking its uuid would revive a CANCELLED booking as another room.
    for index, room in enumerate(rooms):
        if index not in chosen:
            stay, live = _stay(room), not room.get("cancelled")
            pair(
                index,
                lambda details, stay=stay, live=live: (
                    _stay(details) == stay and not (live and details.get("cancelled"))
                ),
            )
    for index, room in enumerate(rooms):
        if index not in chosen and room.get("cancelled"):
            pair(index, lambda details: bool(details.get("cancelled")))
    for index, room in enumerate(rooms):
        if index not in chosen:
            live = not room.get("cancelled")
            pair(index, lambda details, live=live: not (live and details.get("cancelled")))
    slots = []
    next_slot = known.next_slot()
    for index in range(len(rooms)):
        if index in chosen:
            slots.append(chosen[index].slot)
        else:
            slots.append(next_slot)
            next_slot += 1
    return RoomMatch(slots=slots, dropped=free)


def rooms_after(
    known: RoomMap | None, listed: list[MappedRoom], dropped: list[MappedRoom]
) -> list[MappedRoom]:
    """The map's rooms after a revision: the ones it lists, in its order, then every room the
    booking had before (details dropped: they are never sent again), so no slot is given twice."""
    gone = [MappedRoom(slot=room.slot, listed=False) for room in dropped]
    earlier = [room for room in known.rooms if not room.listed] if known else []
    return listed + sorted(gone + earlier, key=lambda room: room.slot)


def _stay(details: Mapping[str, Any]) -> tuple[str | None, ...]:
    return tuple(text(details.get(field)) for field in STAY_FIELDS)
