"""Beds24 source: notify-URL pushes (version 1 and 2) and the inventory (SYNC_ROOM) webhook.

Version 1 only names a booking (``?bookid=N&status=...``) and its status is unreliable, so the
booking is always read from ``GET {api_url}/bookings?id=N``. Version 2 carries the booking itself
(one object or an array). SYNC_ROOM names a room: its calendar is read for ``sync_days`` days from
today and an availability_update is sent for every day that changed since the last known state.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Any

import orjson
from pydantic import Field, ValidationError

from gateway.plugin_api import (
    AcceptedPush,
    IncomingPush,
    Outcome,
    PushRejected,
    RegisterRoute,
    RegisterSource,
    SamplePush,
    SourceConfig,
    SourceContext,
    SourceSettings,
    StoredPush,
    TranslationError,
    TranslationSettings,
    hookimpl,
    limit_guests,
    parse_json,
    request_json,
    without_card_data,
)

from .sandbox import ROUTES, load_sample
from .translate import availability_from_calendar, booking_from_beds24

V1_STATUSES = {"new", "modify", "cancel", "message"}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Beds24 ids: ASCII digits ("²".isdigit() is true, and int() of 5,000 digits raises).
NUMBER = re.compile(r"[0-9]{1,18}")


def _id_text(value: Any) -> str:
    """An id Beds24 may write as a number or a string; anything else is ''."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return ""
    return str(value)[:64]


def versions_json(versions: list[str]) -> bytes:
    """``json.dumps(versions)``, whose digest the dedupe keys of stored pushes were made of: by
    orjson (a quarter of the cost) for the usual one booking in ASCII, where both write the same
    (but for DEL, which json.dumps escapes)."""
    if len(versions) == 1:
        written = orjson.dumps(versions)
        if written.isascii() and b"\x7f" not in written:
            return written
    return json.dumps(versions).encode("utf-8")


class Beds24Settings(SourceSettings):
    """``[sources.beds24]``: the common keys plus the Beds24 API token and the calendar span."""

    api_url: str = "https://beds24.com/api/v2"
    api_token: str = ""
    sync_days: int = Field(90, ge=1, le=730)


class Beds24Source:
    name = "beds24"
    # Acknowledges nothing: the gateway calls acknowledge only for ids an outcome lists (none).
    acknowledge_only_listed = True

    @property
    def samples(self) -> dict[str, SamplePush]:
        """Vendor-documented pushes for ``gateway push-sample beds24 KIND``."""
        return {
            "v1": SamplePush(query={"bookid": "82279106", "status": "new"}),
            "v2": SamplePush(body=load_sample("beds24-v2-booking-1.json")),
            "inventory": SamplePush(body=load_sample("beds24-inventory-1.json")),
        }

    def check_settings(self, settings: SourceConfig) -> None:
        Beds24Settings.from_config(settings)

    def accept(self, push: IncomingPush) -> AcceptedPush:
        if "bookid" in push.query:
            return self._accept_v1(push)
        if push.method != "POST":
            raise PushRejected("expected ?bookid=N (version 1) or a POSTed JSON body (version 2)")
        content_type = push.headers.get("Content-Type", "").lower()
        if content_type.startswith(FORM_TYPES):
            # Only version 1 sends forms, and its form may hold card data: never kept.
            raise PushRejected(
                "a form body needs ?bookid=N (version 1); version 2 and inventory pushes are JSON",
                keep_body=False,
            )
        doc = parse_json(push.body)
        if isinstance(doc, dict) and doc.get("action") is not None:
            return self._accept_inventory(doc)
        items = doc if isinstance(doc, list) else [doc]
        if not items:
            raise PushRejected("body is an empty array")
        for index, item in enumerate(items):
            where = f"[{index}]" if isinstance(doc, list) else "body"
            if not isinstance(item, dict) or not isinstance(item.get("booking"), dict):
                raise PushRejected(f"{where}.booking: missing or not an object")
            if not isinstance(item["booking"].get("id"), (int, str)) or isinstance(
                item["booking"].get("id"), bool
            ):
                raise PushRejected(f"{where}.booking.id: missing or not a number")
        bookings = [without_card_data(item["booking"]) for item in items]
        versions = sorted(f"{b['id']}@{b.get('modifiedTime')}" for b in bookings)
        # Hashed: an array of thousands of bookings must not make a key of a megabyte.
        digest = hashlib.sha256(versions_json(versions)).hexdigest()
        order_key = f"beds24:{bookings[0]['id']}" if len(bookings) == 1 else None
        return AcceptedPush(
            kind="v2",
            payload=bookings,
            dedupe_key=f"v2:{digest}",
            order_key=order_key,
            self_contained=True,  # the bookings themselves: no API read
        )

    def _accept_v1(self, push: IncomingPush) -> AcceptedPush:
        # A version 1 form body may hold card data (CVV, tokens): it is never read or kept.
        bookid = push.query.get("bookid", "")
        status = push.query.get("status", "")
        if not NUMBER.fullmatch(bookid):
            raise PushRejected("bookid: must be a booking number", keep_body=False)
        if status and status not in V1_STATUSES:
            raise PushRejected(
                f"status: must be one of {', '.join(sorted(V1_STATUSES))}", keep_body=False
            )
        return AcceptedPush(
            kind="v1",
            payload={"bookid": int(bookid), "status": status or None},
            order_key=f"beds24:{bookid}",
            coalesce_key=f"v1:{bookid}",
        )

    def _accept_inventory(self, doc: dict[str, Any]) -> AcceptedPush:
        if doc.get("action") != "SYNC_ROOM":
            raise PushRejected(
                f"action: {doc.get('action')!r} is not a known inventory action (SYNC_ROOM)"
            )
        room = _id_text(doc.get("roomId"))
        if not NUMBER.fullmatch(room):
            raise PushRejected("roomId: must be a room number")
        payload = {
            "roomId": room,
            "propId": _id_text(doc.get("propId")),
            "ownerId": _id_text(doc.get("ownerId")),
        }
        return AcceptedPush(kind="inventory", payload=payload, coalesce_key=f"inventory:{room}")

    async def process(self, push: StoredPush, context: SourceContext) -> Outcome:
        try:
            translation = TranslationSettings.of_config(context.settings)
            api = Beds24Settings.from_config(context.settings)
            if push.kind == "v1":
                booking = await self._read_booking(api, context, push.payload["bookid"])
                return self._bookings([booking], translation, "v1")
            if push.kind == "v2":
                return self._bookings(push.payload, translation, "v2")
            if push.kind == "inventory":
                return await self._inventory(api, translation, context, push.payload["roomId"])
        except (TranslationError, ValidationError) as exc:
            raise PushRejected(f"cannot translate: {exc}") from None
        raise PushRejected(f"unknown Beds24 push kind {push.kind!r}")

    def _bookings(
        self, bookings: list[dict[str, Any]], translation: TranslationSettings, kind: str
    ) -> Outcome:
        outcome = Outcome(note=f"{kind}: {len(bookings)} booking(s)")
        for booking in bookings:
            guests = {field: booking.get(field) for field in ("numAdult", "numChild")}
            limit_guests(guests, f"booking {booking.get('id')}")
            event = booking_from_beds24(booking, translation, source=self.name)
            if event is not None:
                outcome.bookings.append(event)
        return outcome

    async def _read_booking(
        self, api: Beds24Settings, context: SourceContext, bookid: int
    ) -> dict[str, Any]:
        answer = await request_json(
            context.http,
            "GET",
            f"{api.api_url.rstrip('/')}/bookings",
            headers={"token": api.api_token},
            params={"id": str(bookid)},
            what=f"reading Beds24 booking {bookid}",
        )
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise PushRejected(f"Beds24 has no booking {bookid}")
        booking: dict[str, Any] = without_card_data(data[0])
        return booking

    async def _inventory(
        self,
        api: Beds24Settings,
        translation: TranslationSettings,
        context: SourceContext,
        room: str,
    ) -> Outcome:
        start = context.today()
        end = start + timedelta(days=api.sync_days - 1)
        answer = await request_json(
            context.http,
            "GET",
            f"{api.api_url.rstrip('/')}/inventory/rooms/calendar",
            headers={"token": api.api_token},
            params={
                "roomId": room,
                "startDate": start.isoformat(),
                "endDate": end.isoformat(),
                "includeNumAvail": "true",
                "includeOverride": "true",
            },
            what=f"reading the Beds24 calendar of room {room}",
        )
        items = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise PushRejected(f"Beds24 calendar answer for room {room} has no data list")
        events = availability_from_calendar(items, translation, start, end)
        return Outcome(
            availability=events,
            only_changed_availability=True,
            note=f"SYNC_ROOM {room}: {len(events)} day(s) read from {start} to {end}",
        )

    async def acknowledge(self, outcome: Outcome, context: SourceContext) -> None:
        return None


@hookimpl
def register_sources(register: RegisterSource) -> None:
    register(Beds24Source())


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for method, path, handler in ROUTES:
        register(method, path, handler)
