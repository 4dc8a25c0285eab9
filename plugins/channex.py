"""Channex source: webhook pushes in, booking revisions pulled and acknowledged, ARI translated.

Booking events carry only ids: the revision is read from the Channex API (``user-api-key``), turned
into OCTO bookings, and acknowledged only after those are stored. With ``send_data: false`` (no
payload) the unacknowledged revisions are read from the feed instead. ARI rows become one
availability_update per product, option and day. Every other event is stored and answered 200.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.config import SourceConfig
from gateway.hookspecs import hookimpl
from gateway.pms import parse_json, request_json, without_card_data
from gateway.sources import AcceptedPush, IncomingPush, Outcome, PushRejected, SourceContext, StoredPush
from gateway.translate.channex import availability_from_ari, bookings_from_revision, revision_attributes
from gateway.translate.common import TranslationError
from gateway.translate.settings import TranslationSettings

BOOKING_EVENTS = {
    "booking",
    "booking_new",
    "booking_modification",
    "booking_cancellation",
    "booking_unmapped_room",
    "booking_unmapped_rate",
    "non_acked_booking",
}


class ChannexSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    api_url: str = "https://app.channex.io/api/v1"
    api_key: str = ""


class ChannexSource:
    name = "channex"

    def check_settings(self, settings: SourceConfig) -> None:
        values = settings.model_dump()
        ChannexSettings.model_validate(values)
        TranslationSettings.from_source(values)

    def accept(self, push: IncomingPush) -> AcceptedPush:
        if push.method != "POST":
            raise PushRejected("Channex webhooks are POSTed JSON", keep_body=False)
        doc = parse_json(push.body)
        if not isinstance(doc, dict):
            raise PushRejected("body must be a JSON object with an 'event'")
        event = doc.get("event")
        if not isinstance(event, str) or not event:
            raise PushRejected("event: missing or not a string")
        payload = doc.get("payload")
        if event in BOOKING_EVENTS:
            if payload is not None and not isinstance(payload, dict):
                raise PushRejected(f"payload: a {event} payload must be an object")
            kind = "booking"
        elif event == "ari":
            if payload is not None and not isinstance(payload, list):
                raise PushRejected("payload: an ari payload must be a list of rows")
            kind = "ari"
        else:
            kind = "other"
        booking_id = payload.get("booking_id") if isinstance(payload, dict) else None
        return AcceptedPush(
            kind=kind,
            payload=without_card_data(doc),
            order_key=f"channex:{booking_id}" if kind == "booking" and booking_id else None,
        )

    async def process(self, push: StoredPush, context: SourceContext) -> Outcome:
        doc: dict[str, Any] = push.payload
        try:
            translation = TranslationSettings.from_source(context.settings.model_dump())
            if push.kind == "booking":
                return await self._bookings(doc, translation, context)
            if push.kind == "ari":
                return await self._availability(doc, translation, context)
        except (TranslationError, ValidationError) as exc:
            raise PushRejected(f"cannot translate: {exc}") from None
        return Outcome(note=f"{doc.get('event')}: stored; it has no OCTO event")

    async def _bookings(
        self, doc: dict[str, Any], translation: TranslationSettings, context: SourceContext
    ) -> Outcome:
        api = ChannexSettings.model_validate(context.settings.model_dump())
        payload = doc.get("payload") or {}
        revision_id = payload.get("revision_id") or payload.get("booking_revision_id")
        if revision_id:
            answer = await self._get(context, api, f"/booking_revisions/{revision_id}")
            revisions = [answer.get("data") if isinstance(answer, dict) else None]
        else:
            # No payload (send_data: false): read every revision not yet acknowledged.
            params = {}
            if doc.get("property_id"):
                params["filter[property_id]"] = str(doc["property_id"])
            answer = await self._get(context, api, "/booking_revisions/feed", params)
            revisions = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(revisions, list) or not all(isinstance(r, dict) for r in revisions):
            raise PushRejected("Channex API answer has no booking revision data")
        outcome = Outcome(note=f"{doc.get('event')}: {len(revisions)} revision(s)")
        for revision in revisions:
            attributes = without_card_data(revision_attributes({"data": revision}))
            events = bookings_from_revision(
                attributes, translation, source=self.name, received_at=context.now()
            )
            for event in events:
                outcome.bookings.append(event.model_copy(update={"revision": revision.get("id")}))
            if revision.get("id"):
                outcome.acknowledge.append(str(revision["id"]))
        return outcome

    async def _availability(
        self, doc: dict[str, Any], translation: TranslationSettings, context: SourceContext
    ) -> Outcome:
        rows = doc.get("payload")
        if not rows:
            return Outcome(note="ari push without rows (send_data: false); nothing to translate")
        rows = [row for row in rows if isinstance(row, dict)]
        keys = [
            (translation.product_id(str(r.get("room_type_id"))), translation.option_id(r.get("rate_plan_id")), str(r.get("date")))
            for r in rows
        ]
        previous = await context.known_availability(keys)
        events = availability_from_ari(rows, translation, previous)
        return Outcome(availability=events, note=f"ari: {len(rows)} row(s), {len(events)} event(s)")

    async def acknowledge(self, outcome: Outcome, context: SourceContext) -> None:
        api = ChannexSettings.model_validate(context.settings.model_dump())
        for revision_id in outcome.acknowledge:
            await request_json(
                context.http,
                "POST",
                f"{api.api_url.rstrip('/')}/booking_revisions/{revision_id}/ack",
                headers={"user-api-key": api.api_key},
                what=f"acknowledging Channex revision {revision_id}",
            )

    async def _get(
        self,
        context: SourceContext,
        api: ChannexSettings,
        path: str,
        params: dict[str, str] | None = None,
    ) -> Any:
        return await request_json(
            context.http,
            "GET",
            api.api_url.rstrip("/") + path,
            headers={"user-api-key": api.api_key},
            params=params,
            what=f"reading Channex {path}",
        )


@hookimpl
def register_sources(register: Any) -> None:
    register(ChannexSource())
