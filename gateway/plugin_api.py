"""Everything a plugin imports, from one module: ``from gateway.plugin_api import hookimpl, ...``.

Names here are the supported plugin API; anything else in ``gateway`` may change between versions.
The built-in Channex and Beds24 sources (``plugins/channex``, ``plugins/beds24``) use only this module.
See docs/plugin_hooks.md for the hooks and a tutorial that adds a PMS source.
"""

from __future__ import annotations

from gateway.config import SourceConfig
from gateway.delivery.worker import Attempt
from gateway.hookspecs import Handler, RegisterRoute, RegisterSource, hookimpl
from gateway.models import EventName, Subscription
from gateway.octo import (
    Availability,
    AvailabilityEvent,
    Booking,
    BookingEvent,
    Contact,
    Refund,
    UnitItem,
    booking_key,
    booking_uuid,
)
from gateway.sandbox import require_sandbox
from gateway.sources import (
    AcceptedPush,
    IncomingPush,
    MappedRoom,
    Outcome,
    PushRejected,
    RetryLater,
    RoomMap,
    SamplePush,
    Source,
    SourceContext,
    StoredPush,
)
from gateway.sources.pms import limit_guests, parse_json, request_json, without_card_data
from gateway.sources.settings import IGNORE, SourceSettings, TranslationSettings
from gateway.sources.translation import (
    STILL_CANCELLABLE,
    DayKey,
    TranslationError,
    availability_slot,
    booking_status,
    cancellation,
    confirmed_at,
    contact_json,
    country_code,
    day_event,
    days,
    full_name,
    parse_day,
    slot_json,
    stay_booking_json,
    text,
    unit_items,
    unit_items_json,
    utc_instant,
    utc_timestamp,
    whole_number,
)
from gateway.web.errors import OctoError
from gateway.web.openapi import describe, hidden

__all__ = [
    "IGNORE",
    "STILL_CANCELLABLE",
    "AcceptedPush",
    "Attempt",
    "Availability",
    "AvailabilityEvent",
    "Booking",
    "BookingEvent",
    "Contact",
    "DayKey",
    "EventName",
    "Handler",
    "IncomingPush",
    "MappedRoom",
    "OctoError",
    "Outcome",
    "PushRejected",
    "Refund",
    "RegisterRoute",
    "RegisterSource",
    "RetryLater",
    "RoomMap",
    "SamplePush",
    "Source",
    "SourceConfig",
    "SourceContext",
    "SourceSettings",
    "StoredPush",
    "Subscription",
    "TranslationError",
    "TranslationSettings",
    "UnitItem",
    "availability_slot",
    "booking_key",
    "booking_status",
    "booking_uuid",
    "cancellation",
    "confirmed_at",
    "contact_json",
    "country_code",
    "day_event",
    "days",
    "describe",
    "full_name",
    "hidden",
    "hookimpl",
    "limit_guests",
    "parse_day",
    "parse_json",
    "request_json",
    "require_sandbox",
    "slot_json",
    "stay_booking_json",
    "text",
    "unit_items",
    "unit_items_json",
    "utc_instant",
    "utc_timestamp",
    "whole_number",
    "without_card_data",
]
