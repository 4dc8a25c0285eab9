"""Actions on one subscription: send a test, list attempts, replay, rotate the signing secret."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gateway.appkeys import deliverer_key, sender_key, store_key
from gateway.delivery.signing import generate_secret
from gateway.delivery.templates import TemplateProblem
from gateway.models import DeliveryState, Subscription, iso
from gateway.samples import sample_data
from gateway.store import utcnow
from gateway.web.errors import OctoError, bad_request, error_response
from gateway.web.openapi import describe
from gateway.web.schemas import Attempt, Replayed, RotatedWebhook, TestOutcome
from gateway.web.webhooks import own_subscription, parse_body, read_json_object, save

ROTATION_GRACE = timedelta(hours=24)
DELIVERY_STATES = {"pending", "leased", "delivered", "dead", "skipped", "superseded"}
DEFAULT_PAGE = 50
MAX_PAGE = 500
# What SQLite stores in an integer column; a larger ``before`` is refused, not overflowed.
MAX_INT = 2**63 - 1


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime = Field(
        description="RFC 3339 time with its offset", examples=["2026-11-24T00:00:00Z"]
    )


class DeliveriesQuery(BaseModel):
    """The query parameters of GET /octo/webhooks/{id}/deliveries (checked by _int_query)."""

    state: DeliveryState | None = Field(default=None, description="only messages in this state")
    limit: int | None = Field(default=None, ge=1, le=MAX_PAGE, description="page size (default 50)")
    before: int | None = Field(
        default=None,
        ge=1,
        le=MAX_INT,
        description="the page after this cursor (from the Link header)",
    )


@describe("Send a sample event now", tag="webhook actions", ok=TestOutcome, errors=[400, 404, 429])
async def send_test(request: web.Request) -> web.Response:
    """Send a sample of the subscription's event now; nothing is queued or retried."""
    try:
        return web.json_response(await send_sample(request, await own_subscription(request)))
    except Busy as exc:
        busy = error_response(exc.status, exc.message)
        busy.headers["Retry-After"] = "1"
        return busy


class Busy(OctoError):
    """No delivery slot free for a test send now (429)."""


async def send_sample(request: web.Request, subscription: Subscription) -> dict[str, Any]:
    """POST a sample event to the subscriber now (the API and the console both)."""
    sender = request.app[sender_key]
    data = sample_data(subscription.event)
    try:
        body = sender.render(subscription.event, data, subscription)
        url = sender.target(subscription.event, data, subscription)
    except TemplateProblem as exc:
        raise bad_request(str(exc)) from None
    msg_id = f"msg_test_{uuid.uuid4().hex}"
    slots = request.app[deliverer_key].slots if deliverer_key in request.app else None
    slot = slots.try_take(subscription.id, subscription.tenant) if slots is not None else None
    if slots is not None and slot is None:
        # A /test counts against the same limits as deliveries, so a burst of them to a slow
        # receiver can't take the connections another tenant's deliveries need.
        raise Busy(
            429, "too many deliveries in flight for this subscription or tenant; try again soon"
        )
    try:
        response = await sender.post(msg_id, subscription.event, url, body, subscription)
    finally:
        if slots is not None and slot is not None and slots.release(slot):
            request.app[deliverer_key].wake()
    return {
        "messageId": msg_id,
        "delivered": response.status is not None and 200 <= response.status < 300,
        "status": response.status,
        "latencyMs": response.latency_ms,
        "response": response.excerpt,
        "error": response.error,
    }


@describe(
    "Delivery attempts, newest first",
    tag="webhook actions",
    query=DeliveriesQuery,
    ok=list[Attempt],
    errors=[400, 404],
    ok_headers={"Link": 'the next page: <url>; rel="next"'},
)
async def list_deliveries(request: web.Request) -> web.Response:
    """Delivery attempts, newest first; ``?state=`` filters by the message's state, ``?limit=``
    and ``?before=`` page (the next page's link is in the ``Link`` header)."""
    subscription = await own_subscription(request)
    state = request.query.get("state")
    if state is not None and state not in DELIVERY_STATES:
        raise bad_request(f"state: must be one of {', '.join(sorted(DELIVERY_STATES))}")
    limit = _int_query(request, "limit", 1, MAX_PAGE)
    if limit is None:
        limit = DEFAULT_PAGE
    before = _int_query(request, "before", 1, None)
    rows = await request.app[store_key].list_attempts(
        subscription.id, state=state, limit=limit, before=before
    )
    response = web.json_response([attempt.view(state_now) for _, attempt, state_now in rows])
    if len(rows) == limit:
        next_url = request.rel_url.update_query(before=rows[-1][0], limit=limit)
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


def _int_query(request: web.Request, name: str, low: int, high: int | None) -> int | None:
    """A whole-number query parameter within bounds, or None when absent; anything else is 400."""
    raw = request.query.get(name)
    if raw is None:
        return None
    top = MAX_INT if high is None else high
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses; and no more digits
    # than the bound has, since int() of thousands of digits raises.
    if (
        not (raw.isascii() and raw.isdigit())
        or len(raw.lstrip("0")) > len(str(top))
        or not low <= int(raw) <= top
    ):
        raise bad_request(f"{name}: must be a whole number {low}..{top}")
    return int(raw)


@describe(
    "Send again every message since a time",
    tag="webhook actions",
    body=ReplayBody,
    ok=Replayed,
    errors=[404],
)
async def replay(request: web.Request) -> web.Response:
    subscription = await own_subscription(request)
    body: ReplayBody = parse_body(ReplayBody, await read_json_object(request))
    replayed = await replay_since(request, subscription, body.since.timestamp())
    return web.json_response({"replayed": replayed})


async def replay_since(request: web.Request, subscription: Subscription, since: float) -> int:
    """Queue again every finished message since ``since`` (the API and the console both)."""
    if not subscription.active:
        raise bad_request('subscription is disabled; PATCH {"active": true} first')
    replayed = await request.app[store_key].replay_deliveries(subscription.id, since)
    if replayed:
        wake_deliverer(request)
    return replayed


def wake_deliverer(request: web.Request) -> None:
    if deliverer_key in request.app:
        request.app[deliverer_key].wake()


@describe(
    "Rotate the signing secret (the old one still signs for 24 h)",
    tag="webhook actions",
    ok=RotatedWebhook,
    errors=[404, 409],
)
async def rotate_secret(request: web.Request) -> web.Response:
    """A new secret at once; the old one keeps signing too for 24 hours (both signatures sent)."""
    rotated = await rotate(request, await own_subscription(request))
    view = rotated.webhook()
    assert rotated.previous_secret_until is not None
    view["previousSecretExpiresAt"] = iso(rotated.previous_secret_until)
    return web.json_response(view)


async def rotate(request: web.Request, subscription: Subscription) -> Subscription:
    """Give a subscription a new secret (the API and the console both)."""
    now = utcnow()
    rotated = subscription.model_copy(
        update={
            "secret": generate_secret(),
            "previous_secret": subscription.secret,
            "previous_secret_until": now + ROTATION_GRACE,
            "updated_at": now,
        }
    )
    await save(request, rotated, subscription)
    return rotated


def add_routes(app: web.Application) -> None:
    app.router.add_post("/octo/webhooks/{id}/test", send_test)
    app.router.add_get("/octo/webhooks/{id}/deliveries", list_deliveries)
    app.router.add_post("/octo/webhooks/{id}/replay", replay)
    app.router.add_post("/octo/webhooks/{id}/rotate-secret", rotate_secret)
