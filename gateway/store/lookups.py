"""What both stores keep beside a booking's state to find it by: the fields resellers look
bookings up by, and the day its stay ends (when maintenance may drop it)."""

from __future__ import annotations

from typing import Any


def booking_lookups(
    booking: dict[str, Any],
) -> tuple[str | None, str | None, str | None, str | None]:
    """(uuid, supplierReference, resellerReference, the stay's last day ``YYYY-MM-DD``) of an OCTO
    booking, each None when absent: the values the stores' indexes hold, written by the store
    from the booking it has in hand (an index on the JSON parsed it once per index)."""
    availability = booking.get("availability")
    end = availability.get("localDateTimeEnd") if isinstance(availability, dict) else None
    return (
        _text(booking.get("uuid")),
        _text(booking.get("supplierReference")),
        _text(booking.get("resellerReference")),
        end[:10] if isinstance(end, str) else None,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
