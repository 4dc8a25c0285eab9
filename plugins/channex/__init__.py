"""Channex source: webhook pushes in, booking revisions pulled and acknowledged, ARI translated.

Booking events carry only ids: the revision is read from the Channex API (``user-api-key``), turned
into OCTO bookings, and acknowledged only after those are stored. With ``send_data: false`` (no
payload) the unacknowledged revisions are read from the feed instead. ARI rows become one
availability_update per product, option and day. Every other event is stored and answered 200.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from gateway.plugin_api import (
    AcceptedPush,
    IncomingPush,
    Outcome,
    PushRejected,
    RegisterRoute,
    RegisterSource,
    RetryLater,
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
    text,
    without_card_data,
)

from .sandbox import ROUTES, load_sample
from .translate import (
    ari_events,
    ari_rows,
    revision_attributes,
    revision_version,
    translate_revision,
)

BOOKING_EVENTS = {
    "booking",
    "booking_new",
    "booking_modification",
    "booking_cancellation",
    "booking_unmapped_room",
    "booking_unmapped_rate",
    "non_acked_booking",
}


# Channex ids are UUIDs; anything else in an id that goes into a URL path is refused.
CHANNEX_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# A row's date_from..date_to range longer than this is refused (Channex keeps about two years).
MAX_ROW_DAYS = 1100
# The revision feed is read in pages (Channex list endpoints take pagination[page] and
# pagination[limit]); one push reads at most FEED_PAGE_SIZE x FEED_MAX_PAGES revisions.
FEED_PAGE_SIZE = 100
FEED_MAX_PAGES = 20
EARLIEST = datetime.min.replace(tzinfo=UTC)
# One event per product/option/day: a push touching more than this many is refused, not expanded.
MAX_SLOTS = 200_000


def _limit_guests(attributes: dict[str, Any], revision_id: str) -> None:
    rooms = attributes.get("rooms")
    for index, room in enumerate(rooms if isinstance(rooms, list) else []):
        occupancy = room.get("occupancy") if isinstance(room, dict) else None
        occupancy = occupancy or attributes.get("occupancy")
        if isinstance(occupancy, dict):
            limit_guests(occupancy, f"revision {revision_id}: rooms[{index}].occupancy")


def _inserted(pair: tuple[dict[str, Any], dict[str, Any]]) -> datetime:
    """Sort key: a revision's inserted_at (one without it first, in the order given)."""
    return revision_version(pair[1]) or EARLIEST


def _revision_named(payload: Any) -> bool:
    return isinstance(payload, dict) and bool(
        payload.get("revision_id") or payload.get("booking_revision_id")
    )


def _id_part(value: Any) -> str:
    return value[:128] if isinstance(value, str) else ""


class ChannexSettings(SourceSettings):
    """``[sources.channex]``: the common keys plus the Channex API credentials."""

    api_url: str = "https://app.channex.io/api/v1"
    api_key: str = ""


class ChannexSource:
    name = "channex"
    # Acknowledges only the revisions an outcome lists: an outcome listing none (ARI) is not
    # handed to acknowledge.
    acknowledge_only_listed = True

    @property
    def samples(self) -> dict[str, SamplePush]:
        """Vendor-documented pushes for ``gateway push-sample channex KIND``."""
        files = {
            "booking": "channex-booking-1.json",
            "booking_new": "channex-booking-2.json",
            "ari": "channex-ari-1.json",
            "message": "channex-message-1.json",
        }
        return {kind: SamplePush(body=load_sample(name)) for kind, name in files.items()}

    def check_settings(self, settings: SourceConfig) -> None:
        ChannexSettings.from_config(settings)

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
        order_key = f"channex:{booking_id}" if kind == "booking" and booking_id else None
        coalesce_key = None
        if kind == "booking" and not _revision_named(payload):
            # A push without a revision id reads the feed: such pushes take turns per property
            # (two reading the feed at once could send one booking's revisions out of order), and
            # one still waiting stands for any later one (its read will see the same revisions).
            order_key = coalesce_key = f"channex-feed:{_id_part(doc.get('property_id'))}"
        if kind == "booking" and isinstance(payload, dict):
            for key in ("revision_id", "booking_revision_id", "booking_id"):
                value = payload.get(key)
                if value is not None and not (
                    isinstance(value, str) and CHANNEX_ID.fullmatch(value)
                ):
                    raise PushRejected(f"payload.{key}: not a Channex id")
        return AcceptedPush(
            kind=kind,
            payload=without_card_data(doc),
            order_key=order_key,
            coalesce_key=coalesce_key,
            # ARI rows and events with no OCTO event need no API call; bookings read revisions.
            self_contained=kind != "booking",
        )

    async def process(self, push: StoredPush, context: SourceContext) -> Outcome:
        doc: dict[str, Any] = push.payload
        try:
            translation = TranslationSettings.of_config(context.settings)
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
        api = ChannexSettings.from_config(context.settings)
        payload = doc.get("payload") or {}
        revision_id = payload.get("revision_id") or payload.get("booking_revision_id")
        if revision_id:
            answer = await self._get(
                context, api, f"/booking_revisions/{quote(str(revision_id), safe='')}"
            )
            revisions: Any = [answer.get("data") if isinstance(answer, dict) else None]
        else:
            # No payload (send_data: false): read every revision not yet acknowledged.
            revisions = await self._feed(context, api, doc.get("property_id"))
        if not isinstance(revisions, list) or not all(isinstance(r, dict) for r in revisions):
            raise PushRejected("Channex API answer has no booking revision data")
        outcome = Outcome(note=f"{doc.get('event')}: {len(revisions)} revision(s)")
        attributes = [without_card_data(revision_attributes({"data": r})) for r in revisions]
        # The revision read by id is the one the push named, whatever its answer calls itself: in
        # the booking message shape (``type: booking``) ``id`` is the booking's, so every revision
        # of the booking would look like one already sent, and be acknowledged under that id.
        named = [{**revisions[0], "id": str(revision_id)}] if revision_id else revisions
        stale = 0
        # Oldest first, so a feed holding several revisions of one booking applies them in order.
        for revision, attrs in sorted(zip(named, attributes, strict=True), key=_inserted):
            _limit_guests(attrs, str(revision.get("id")))
            booking_id = text(attrs.get("booking_id")) or text(attrs.get("id"))
            if booking_id is None:
                raise TranslationError("booking_id: missing")
            known = await context.room_map(booking_id)
            # Channex does not promise delivery order: a revision's inserted_at says which is newer.
            version = revision_version(attrs)
            if known and known.version and version and version < known.version:
                stale += 1  # older than what the booking's rooms were last matched against
            else:
                result = translate_revision(
                    attrs, translation, known, source=self.name, received_at=context.now()
                )
                context.keep_room_map(booking_id, result.rooms)
                outcome.bookings += [
                    event.model_copy(update={"revision": revision.get("id"), "version": version})
                    for event in result.events
                ]
            if revision.get("id"):
                outcome.acknowledge.append(str(revision["id"]))
        if stale:
            outcome.note = f"{outcome.note}; {stale} older than the booking's last, not sent"
        return outcome

    async def _availability(
        self, doc: dict[str, Any], translation: TranslationSettings, context: SourceContext
    ) -> Outcome:
        rows = doc.get("payload")
        if not rows:
            return Outcome(note="ari push without rows (send_data: false); nothing to translate")
        rows = [row for row in rows if isinstance(row, dict)]
        # Each row read once: the slots to look up, then the translation.
        read, keys = ari_rows(rows, translation, max_row_days=MAX_ROW_DAYS, max_slots=MAX_SLOTS)
        previous = await context.known_availability_json(keys)
        events = ari_events(read, translation, previous)
        return Outcome(availability=events, note=f"ari: {len(rows)} row(s), {len(events)} event(s)")

    async def acknowledge(self, outcome: Outcome, context: SourceContext) -> None:
        api = ChannexSettings.from_config(context.settings)
        failures = []
        # Every revision is tried, so one failed ack does not leave the others in the feed.
        for revision_id in outcome.acknowledge:
            try:
                await request_json(
                    context.http,
                    "POST",
                    f"{api.api_url.rstrip('/')}/booking_revisions/{quote(revision_id, safe='')}/ack",
                    headers={"user-api-key": api.api_key},
                    what=f"acknowledging Channex revision {revision_id}",
                )
            except (RetryLater, PushRejected) as exc:
                failures.append(str(exc))
        if failures:
            raise RetryLater("; ".join(failures))

    async def _feed(
        self, context: SourceContext, api: ChannexSettings, property_id: Any
    ) -> list[Any] | None:
        """The unacknowledged revisions, page by page up to ``FEED_MAX_PAGES``; what is left is
        read by the next push (Channex re-announces unacknowledged bookings)."""
        revisions: dict[str, Any] = {}
        for page in range(1, FEED_MAX_PAGES + 1):
            params = {"pagination[page]": str(page), "pagination[limit]": str(FEED_PAGE_SIZE)}
            if property_id:
                params["filter[property_id]"] = str(property_id)
            answer = await self._get(context, api, "/booking_revisions/feed", params)
            data = answer.get("data") if isinstance(answer, dict) else None
            if not isinstance(data, list):
                return None
            before = len(revisions)
            for revision in data:
                key = str(revision.get("id")) if isinstance(revision, dict) else repr(revision)
                revisions.setdefault(key, revision)
            meta = answer.get("meta")
            total = meta.get("total") if isinstance(meta, dict) else None
            # A page that adds nothing new also ends it (an API that ignores the page number).
            if len(revisions) == before or not isinstance(total, int) or len(revisions) >= total:
                break
        return list(revisions.values())

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
def register_sources(register: RegisterSource) -> None:
    register(ChannexSource())


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for method, path, handler in ROUTES:
        register(method, path, handler)
