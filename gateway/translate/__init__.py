"""PMS data -> OCTO objects: pure functions, no I/O (the source plugins fetch and store)."""

from gateway.translate.beds24 import availability_from_calendar, booking_from_beds24
from gateway.translate.channex import (
    availability_from_ari,
    bookings_from_revision,
    revision_attributes,
)
from gateway.translate.common import TranslationError, changed_availability
from gateway.translate.diff import booking_diff
from gateway.translate.settings import IGNORE, TranslationSettings

__all__ = [
    "IGNORE",
    "TranslationError",
    "TranslationSettings",
    "availability_from_ari",
    "availability_from_calendar",
    "booking_diff",
    "booking_from_beds24",
    "bookings_from_revision",
    "changed_availability",
    "revision_attributes",
]
