"""/ingest/{source}: verify the sender, store the push durably, answer. Processing comes after."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.appkeys import config_key, store_key
from gateway.auth import tokens_equal
from gateway.errors import OctoError, error_response
from gateway.sources import IncomingPush, PushRejected, Source

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Gateway-Token"
# Never stored: they authenticate the sender or a browser, and are useless to processing.
SECRET_HEADERS = {"x-gateway-token", "authorization", "cookie", "proxy-authorization"}
REJECTED_KIND = "rejected"

sources_key = web.AppKey("sources", dict[str, Source])
wake_processor_key: web.AppKey[Callable[[], None]] = web.AppKey("wake_processor")


def incoming_push(request: web.Request, source: str, body: bytes) -> IncomingPush:
    return IncomingPush(
        source=source,
        method=request.method,
        query={k: v for k, v in request.query.items() if k != "token"},
        headers={k: v for k, v in request.headers.items() if k.lower() not in SECRET_HEADERS},
        body=body,
    )


def raw_payload(push: IncomingPush, *, keep_body: bool) -> dict[str, Any]:
    """How a push that could not be parsed is kept, so it can be parsed again after a fix."""
    return {
        "method": push.method,
        "query": dict(push.query),
        "contentType": push.headers.get("Content-Type"),
        "body": base64.b64encode(push.body).decode("ascii") if keep_body else None,
    }


def incoming_from_raw(source: str, raw: dict[str, Any]) -> IncomingPush:
    body = base64.b64decode(raw["body"]) if raw.get("body") else b""
    headers = {"Content-Type": raw["contentType"]} if raw.get("contentType") else {}
    return IncomingPush(source, raw["method"], raw["query"], headers, body)


def dedupe_key(kind: str, payload: Any) -> str:
    canonical = json.dumps([kind, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


async def ingest(request: web.Request) -> web.Response:
    name = request.match_info["source"]
    settings = request.app[config_key].sources.get(name)
    source = request.app[sources_key].get(name)
    if settings is None or source is None:
        raise OctoError(404, f"unknown ingest source {name!r}")
    # The token is checked before the body is even read: nothing from an unknown sender is kept.
    token = request.headers.get(TOKEN_HEADER) or request.query.get("token") or ""
    if not token or not tokens_equal(token, settings.token):
        raise OctoError(401, f"missing or wrong token for source {name!r}")
    body = await request.read()
    push = incoming_push(request, name, body)
    store = request.app[store_key]
    try:
        accepted = source.accept(push)
    except PushRejected as exc:
        payload = raw_payload(push, keep_body=exc.keep_body)
        record, _ = await store.insert_push(
            source=name,
            kind=REJECTED_KIND,
            payload=payload,
            dedupe_key=dedupe_key(REJECTED_KIND, payload),
            order_key=None,
            state="failed",
            error=str(exc),
        )
        log.warning("push %s from %s rejected: %s", record.id, name, exc)
        return error_response(400, f"{name} push rejected: {exc}", id=record.id, state=record.state)
    record, created = await store.insert_push(
        source=name,
        kind=accepted.kind,
        payload=accepted.payload,
        dedupe_key=None if accepted.coalesce_key else accepted.dedupe_key or dedupe_key(accepted.kind, accepted.payload),
        order_key=accepted.order_key,
        coalesce_key=accepted.coalesce_key,
    )
    if created:
        request.app[wake_processor_key]()
    else:
        log.info("push from %s is a repeat of %s", name, record.id)
    return web.json_response(
        {"id": record.id, "state": record.state, "kind": record.kind, "duplicate": not created}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ingest/{source}", ingest, allow_head=False)
    app.router.add_post("/ingest/{source}", ingest)
