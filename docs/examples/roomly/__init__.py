"""Roomly: a made-up PMS, added as a source plugin (the tutorial in docs/plugin_hooks.md).

Roomly POSTs a webhook for every change. ``reservation.changed`` names a reservation and, when the
property sends full payloads, carries it too; otherwise the gateway reads it from
``GET {api_url}/reservations/{id}`` and, once its OCTO booking is stored, acknowledges that version
with ``POST {api_url}/reservations/{id}/acknowledge``. ``availability.changed`` carries a room
type's days. Load it by naming this folder's parent as the plugins folder::

    [plugins]
    dir = "docs/examples"

    [sources.roomly]
    token = "..."                             # what Roomly presents as X-Gateway-Token
    api_url = "https://api.roomly.example/v1"
    api_key = "..."                           # sent as X-Roomly-Key
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any
from urllib.parse import quote

from pydantic import Field, ValidationError

from gateway.plugin_api import (
    AcceptedPush,
    IncomingPush,
    Outcome,
    PushRejected,
    RegisterSource,
    SamplePush,
    SourceConfig,
    SourceContext,
    SourceSettings,
    StoredPush,
    TranslationError,
    hookimpl,
    limit_guests,
    parse_json,
    request_json,
    without_card_data,
)

from .translate import availability_from_days, booking_from_reservation

# Roomly ids go into URL paths: anything but these characters is refused before the 200.
ROOMLY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SAMPLES = resources.files(__package__).joinpath("samples")


class RoomlySettings(SourceSettings):
    """``[sources.roomly]``: token, api_url and the translation maps (from ``SourceSettings``),
    plus Roomly's own keys. Any other key is refused by ``check_settings``."""

    api_url: str = "https://api.roomly.example/v1"
    api_key: str = Field(min_length=1)


class RoomlySource:
    name = "roomly"

    @property
    def samples(self) -> dict[str, SamplePush]:
        """Pushes for ``gateway push-sample roomly KIND``."""
        return {
            kind: SamplePush(body=json.loads(SAMPLES.joinpath(file).read_text(encoding="utf-8")))
            for kind, file in (
                ("reservation", "roomly-webhook-reservation-1.json"),
                ("availability", "roomly-webhook-availability-1.json"),
            )
        }

    def check_settings(self, settings: SourceConfig) -> None:
        RoomlySettings.from_config(settings)

    def accept(self, push: IncomingPush) -> AcceptedPush:
        doc = parse_json(push.body)
        if not isinstance(doc, dict):
            raise PushRejected("body must be a JSON object with an 'event'")
        event = doc.get("event")
        if event == "reservation.changed":
            reservation_id = doc.get("reservation_id")
            if not isinstance(reservation_id, str) or not ROOMLY_ID.fullmatch(reservation_id):
                raise PushRejected("reservation_id: missing or not a Roomly id")
            return AcceptedPush(
                kind="reservation",
                # A full payload carries the guest's card: it is never stored.
                payload=without_card_data(doc),
                # One reservation's changes are processed one at a time, in arrival order.
                order_key=f"roomly:{reservation_id}",
            )
        if event == "availability.changed":
            if not isinstance(doc.get("room_type_id"), str) or not isinstance(
                doc.get("days"), list
            ):
                raise PushRejected("availability.changed needs room_type_id and a days list")
            return AcceptedPush(kind="availability", payload=doc)
        raise PushRejected(f"event: {event!r} is not a Roomly event this gateway knows")

    async def process(self, push: StoredPush, context: SourceContext) -> Outcome:
        settings = RoomlySettings.from_config(context.settings)
        try:
            if push.kind == "reservation":
                return await self._reservation(push.payload, settings, context)
            if push.kind == "availability":
                events = availability_from_days(
                    push.payload["room_type_id"], push.payload["days"], settings
                )
                return Outcome(availability=events, note=f"{len(events)} day(s)")
        except (TranslationError, ValidationError) as exc:
            raise PushRejected(f"cannot translate: {exc}") from None
        raise PushRejected(f"unknown Roomly push kind {push.kind!r}")

    async def _reservation(
        self, doc: dict[str, Any], settings: RoomlySettings, context: SourceContext
    ) -> Outcome:
        reservation = doc.get("reservation")
        if not isinstance(reservation, dict):
            # Only ids in the push: read the reservation (RetryLater while Roomly is down).
            answer = await request_json(
                context.http,
                "GET",
                f"{settings.api_url.rstrip('/')}/reservations/{quote(doc['reservation_id'], safe='')}",
                headers={"X-Roomly-Key": settings.api_key},
                what=f"reading Roomly reservation {doc['reservation_id']}",
            )
            reservation = answer.get("reservation") if isinstance(answer, dict) else None
            if not isinstance(reservation, dict):
                raise PushRejected("Roomly API answer has no reservation")
        reservation = without_card_data(reservation)
        limit_guests(
            {field: reservation.get(field) for field in ("adults", "children")}, "reservation"
        )
        event = booking_from_reservation(reservation, settings)
        outcome = Outcome(note=f"reservation {doc['reservation_id']}")
        if event is not None:
            outcome.bookings.append(event)
        # Handed back to acknowledge() once the booking is stored.
        outcome.acknowledge.append(f"{doc['reservation_id']}@{reservation.get('version')}")
        return outcome

    async def acknowledge(self, outcome: Outcome, context: SourceContext) -> None:
        settings = RoomlySettings.from_config(context.settings)
        for item in outcome.acknowledge:
            reservation_id, _, version = item.partition("@")
            await request_json(
                context.http,
                "POST",
                f"{settings.api_url.rstrip('/')}/reservations/{quote(reservation_id, safe='')}/acknowledge",
                headers={"X-Roomly-Key": settings.api_key},
                params={"version": version},
                what=f"acknowledging Roomly reservation {reservation_id}",
            )


@hookimpl
def register_sources(register: RegisterSource) -> None:
    register(RoomlySource())
