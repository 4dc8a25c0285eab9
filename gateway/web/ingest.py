"""/ingest/{source}: verify the sender, store the push durably, answer. Processing comes after,
except for a self-contained push (it carries all its data): that one is processed first and stored
with its events in one transaction."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.appkeys import config_key, metrics_key, store_key
from gateway.models import PushRecord
from gateway.sources import AcceptedPush, IncomingPush, PushRejected, Source
from gateway.sources.pms import without_card_data
from gateway.store.errors import StorageUnavailable
from gateway.store.interface import RoomMapConflict, Store
from gateway.web.auth import tokens_equal
from gateway.web.errors import OctoError, error_response
from gateway.web.openapi import describe
from gateway.web.schemas import Ingested, IngestRejected

if TYPE_CHECKING:
    from gateway.pipeline.processing import Translated

log = logging.getLogger(__name__)
T = TypeVar("T")

TOKEN_HEADER = "X-Gateway-Token"
# Never stored: they authenticate the sender or a browser, and are useless to processing.
SECRET_HEADERS = {"x-gateway-token", "authorization", "cookie", "proxy-authorization"}
REJECTED_KIND = "rejected"


class PushIntake(Protocol):
    """The processor as ingest sees it: a self-contained push is processed by it before it is
    stored; a push stored leased under a reservation is handed over directly; any other new push
    just wakes it."""

    @property
    def lease_seconds(self) -> float: ...

    def wake(self) -> None: ...

    def reserve(self) -> bool: ...

    def adopt(self, push: PushRecord) -> None: ...

    def release(self) -> None: ...

    async def translate(self, name: str, accepted: AcceptedPush) -> Translated | None: ...

    def stored(
        self, translated: Translated, write: asyncio.Future[tuple[PushRecord, bool, int]]
    ) -> None: ...


class NoProcessor:
    """Stands in when the app runs without workers: pushes are only stored."""

    lease_seconds = 0.0

    def wake(self) -> None:
        pass

    async def translate(self, name: str, accepted: AcceptedPush) -> Translated | None:
        return None

    def stored(
        self, translated: Translated, write: asyncio.Future[tuple[PushRecord, bool, int]]
    ) -> None:
        raise AssertionError("nothing was processed")

    def reserve(self) -> bool:
        return False

    def adopt(self, push: PushRecord) -> None:
        raise AssertionError("nothing was reserved")

    def release(self) -> None:
        raise AssertionError("nothing was reserved")


sources_key = web.AppKey("sources", dict[str, Source])
intake_key = web.AppKey("push_intake", PushIntake)


def incoming_push(request: web.Request, source: str, body: bytes) -> IncomingPush:
    # Most pushes have no query: its parsed form is not built for them.
    query = {k: v for k, v in request.query.items() if k != "token"} if request.query_string else {}
    return IncomingPush(source, request.method, query, without_secrets(request.headers), body)


def without_secrets(headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
    """A copy of the headers without SECRET_HEADERS. Case-insensitive, like HTTP:
    ``headers.get("Content-Type")`` finds "content-type" too. Copied whole, then the few secret
    names removed: cheaper than a Python test of each header's name."""
    kept = CIMultiDict(headers)
    for name in SECRET_HEADERS:
        kept.popall(name, None)
    return CIMultiDictProxy(kept)


# Where a body that isn't JSON mentions one of these, it may hold card data: it is not kept.
CARD_HINTS = (b"cvv", b"cvc", b"card", b"guarantee", b"token")


def keepable_body(body: bytes) -> bytes | None:
    """What of a rejected push's body may be stored: a JSON body without its card data (a JSON body
    that needs no redaction is kept byte for byte), a body that isn't JSON only when it mentions
    nothing card-like; else None."""
    try:
        doc = json.loads(body)
        redacted = without_card_data(doc)
        if redacted == doc:
            return body
        return json.dumps(redacted).encode("utf-8")
    except (ValueError, RecursionError):
        lowered = body.lower()
        return None if any(hint in lowered for hint in CARD_HINTS) else body


def storable_text(value: str | None) -> str | None:
    """A header value as text the store can keep: aiohttp reads bytes that are not UTF-8 as lone
    surrogates, which JSON storage refuses (a rejected push was then lost with a 500)."""
    if value is None:
        return None
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def raw_payload(push: IncomingPush, *, keep_body: bool) -> dict[str, Any]:
    """How a push that could not be parsed is kept, so it can be parsed again after a fix."""
    body = keepable_body(push.body) if keep_body and push.body else None
    return {
        "method": push.method,
        "query": dict(push.query),
        "contentType": storable_text(push.headers.get("Content-Type")),
        "body": base64.b64encode(body).decode("ascii") if body else None,
    }


def incoming_from_raw(source: str, raw: dict[str, Any]) -> IncomingPush:
    body = base64.b64decode(raw["body"]) if raw.get("body") else b""
    headers: CIMultiDict[str] = CIMultiDict()
    if raw.get("contentType"):
        headers["Content-Type"] = raw["contentType"]
    return IncomingPush(source, raw["method"], raw["query"], CIMultiDictProxy(headers), body)


def dedupe_key(kind: str, payload: Any) -> str:
    canonical = json.dumps([kind, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def raw_dedupe_key(push: IncomingPush) -> str:
    """A sender's retry repeats the request byte for byte; hashing the raw request is cheaper
    than canonicalising the parsed payload."""
    # What json.dumps writes for no query, without calling it (most pushes have none); the bytes
    # hashed in one call.
    query = json.dumps(sorted(push.query.items())).encode("utf-8") if push.query else b"[]"
    return hashlib.sha256(push.method.encode() + query + b"\0" + push.body).hexdigest()


@describe(
    "Take a push from a PMS",
    tag="ingest",
    description=(
        "The push is stored durably before the 200. The body is what the PMS sends: Channex's"
        " webhook JSON, Beds24 version 2 JSON (one booking or an array), Beds24's inventory"
        " SYNC_ROOM, or nothing with ?bookid=N&status=... (Beds24 version 1, GET or POST)."
        " A body that can't be parsed answers 400 with the id of the copy kept as failed."
    ),
    auth="ingest_token",
    body=Any,
    body_required=False,
    ok=Ingested,
    errors=[400, 404, 413, 503],
    error_bodies={400: IngestRejected},
    path_values=lambda app: {"source": sorted(app[config_key].sources)},
)
async def ingest(request: web.Request) -> web.Response:
    name = request.match_info["source"]
    app = request.app  # a property that looks the app up: once
    settings = app[config_key].sources.get(name)
    source = app[sources_key].get(name)
    if settings is None or source is None:
        raise OctoError(404, f"unknown ingest source {name!r}")
    # The token is checked before the body is even read: nothing from an unknown sender is kept.
    token = request.headers.get(TOKEN_HEADER) or request.query.get("token") or ""
    if not token or not tokens_equal(token, settings.token):
        app[metrics_key].count_push(name, "unauthorized")
        raise OctoError(401, f"missing or wrong token for source {name!r}")
    store = app[store_key]
    try:
        body = await request.read()
    except web.RequestPayloadError as exc:
        # A body that can't even be read (a broken Content-Encoding): kept as failed, without it.
        push = incoming_push(request, name, b"")
        cause = exc.__cause__ or exc
        return await reject(request, push, PushRejected(f"body could not be read: {cause}"))
    push = incoming_push(request, name, body)
    try:
        accepted = source.accept(push)
    except PushRejected as exc:
        return await reject(request, push, exc)
    key = None if accepted.coalesce_key else accepted.dedupe_key or raw_dedupe_key(push)
    intake = app[intake_key]
    if accepted.self_contained:
        answer = await ingest_processed(request, name, accepted, key, intake, store)
        if answer is not None:
            return answer
    reserved = intake.reserve()
    write = asyncio.ensure_future(
        store.insert_push(
            source=name,
            kind=accepted.kind,
            payload=accepted.payload,
            dedupe_key=key,
            order_key=accepted.order_key,
            coalesce_key=accepted.coalesce_key,
            lease_seconds=intake.lease_seconds if reserved else None,
        )
    )
    # Whether the answer waits for it or not, the stored push goes to the processor.
    write.add_done_callback(lambda done: _hand_over(intake, reserved, done))
    record, created = await within_write_timeout(request, write)
    return stored_answer(request, name, record, created)


async def ingest_processed(
    request: web.Request,
    name: str,
    accepted: AcceptedPush,
    dedupe_key: str | None,
    intake: PushIntake,
    store: Store,
) -> web.Response | None:
    """A self-contained push, processed now and stored with its events in one transaction (one
    round trip to the store, no hand-over to the processor). None when it goes the usual way:
    the source failed on it (the failure is recorded there), or a room map it read moved on."""
    translated = await intake.translate(name, accepted)
    if translated is None:
        return None
    write = asyncio.ensure_future(
        store.insert_processed_push(
            id=translated.id,
            source=name,
            kind=accepted.kind,
            payload=accepted.payload,
            dedupe_key=dedupe_key,
            order_key=accepted.order_key,
            coalesce_key=accepted.coalesce_key,
            events=translated.events,
            note=translated.outcome.note,
            room_maps=translated.room_maps,
            hand_over=translated.hand_over,
        )
    )
    # Whether the answer waits for it or not, what was stored goes on (deliveries, acks).
    write.add_done_callback(partial(intake.stored, translated))
    try:
        record, created, _ = await within_write_timeout(request, write)
    except RoomMapConflict:
        return None
    return stored_answer(request, name, record, created)


def stored_answer(
    request: web.Request, name: str, record: PushRecord, created: bool
) -> web.Response:
    request.app[metrics_key].count_push(name, "stored" if created else "duplicate")
    if not created:
        log.info("push from %s is a repeat of %s", name, record.id)
    answer = {"id": record.id, "state": record.state, "kind": record.kind, "duplicate": not created}
    # orjson: json_response's json.dumps cost 3 µs more per push; the header given whole, not
    # set through content_type and charset (parsed and written again per answer).
    return web.Response(body=orjson.dumps(answer), headers=ANSWER_HEADERS)


ANSWER_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json; charset=utf-8"}))


def _hand_over(
    intake: PushIntake, reserved: bool, write: asyncio.Future[tuple[PushRecord, bool]]
) -> None:
    """A push stored leased under a reservation starts processing at once; any other new push
    waiting to be processed wakes the processor to claim it; a failed write gives the
    reservation back."""
    if write.cancelled() or write.exception() is not None:
        if reserved:
            intake.release()
        return
    record, created = write.result()
    if reserved and created and record.lease_token is not None:
        intake.adopt(record)
        return
    if reserved:
        intake.release()
    if created and record.state == "accepted":
        intake.wake()


async def within_write_timeout(request: web.Request, write: Awaitable[T]) -> T:
    """The write's result, or ``StorageUnavailable`` (503 with Retry-After) once it has taken
    longer than ``storage.write_timeout``: a sender waits seconds, never the database's lock
    timeout times the queue. A write still running goes on; if it lands, the sender's retry is
    recognised as a repeat."""
    timeout = request.app[config_key].storage.write_timeout
    task = asyncio.ensure_future(write)
    task.add_done_callback(_retrieved)
    # One future woken by the write or a timer: what ``asyncio.timeout`` around ``shield`` does,
    # without its context manager and inner future (9 µs of the loop's time per push).
    waiter: asyncio.Future[None] = task.get_loop().create_future()
    timer = task.get_loop().call_later(timeout, _wake, waiter)
    task.add_done_callback(partial(_wake, waiter))
    try:
        await waiter  # cancelling the request leaves the write going on
    finally:
        timer.cancel()
    if not task.done():
        raise StorageUnavailable(f"the push could not be stored within {timeout:g} s")
    return task.result()


def _wake(waiter: asyncio.Future[None], *_: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A write nobody waits for any more: its failure was logged by the store, not lost."""
    if not task.cancelled():
        task.exception()


async def reject(request: web.Request, push: IncomingPush, exc: PushRejected) -> web.Response:
    """Keep a push that can't be parsed as ``failed`` (replayable) and answer 400 naming why."""
    name = push.source
    payload = raw_payload(push, keep_body=exc.keep_body)
    store = request.app[store_key]
    record, _ = await within_write_timeout(
        request,
        store.insert_push(
            source=name,
            kind=REJECTED_KIND,
            payload=payload,
            dedupe_key=dedupe_key(REJECTED_KIND, payload),
            order_key=None,
            state="failed",
            error=str(exc),
        ),
    )
    request.app[metrics_key].count_push(name, "rejected")
    log.warning("push %s from %s rejected: %s", record.id, name, exc)
    return error_response(400, f"{name} push rejected: {exc}", id=record.id, state=record.state)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ingest/{source}", ingest, allow_head=False)
    app.router.add_post("/ingest/{source}", ingest)
