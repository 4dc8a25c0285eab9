"""Reconciliation reads: the latest OCTO Bookings and Availability the gateway sent.

A reseller that missed webhooks (its outage, a dead-lettered message) re-syncs with these instead of
a replay. Tenant-scoped like the webhooks: a key sees only bookings and availability of its
``products`` (another product's booking is a 404, its availability is absent).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from gateway.appkeys import store_key
from gateway.models import BookingFilter
from gateway.octo import Availability, Booking
from gateway.web.errors import bad_request, not_found
from gateway.web.openapi import describe
from gateway.web.webhooks import caller

DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_DAYS = 366  # days one availability read may span
DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


class BookingsQuery(BaseModel):
    """The query parameters of GET /octo/bookings."""

    supplierReference: str | None = Field(default=None, description="the PMS booking id")
    resellerReference: str | None = Field(default=None, description="the OTA's reference")
    updatedSince: datetime | None = Field(
        default=None,
        description="RFC 3339 date-time: only bookings the gateway sent at or after it",
    )
    limit: int | None = Field(
        default=None, ge=1, le=MAX_PAGE, description=f"page size (default {DEFAULT_PAGE})"
    )
    cursor: str | None = Field(
        default=None, description="the page after this one (from the Link header); opaque"
    )


class AvailabilityQuery(BaseModel):
    """The query parameters of GET /octo/availability."""

    productId: str
    optionId: str
    localDateStart: date = Field(description="first day, YYYY-MM-DD")
    localDateEnd: date = Field(description=f"last day, YYYY-MM-DD (at most {MAX_DAYS} days on)")


@describe(
    "The latest Booking sent for a uuid",
    tag="reconciliation",
    auth="api_key",
    ok=Booking,
    errors=[404],
)
async def get_booking(request: web.Request) -> web.Response:
    """The last OCTO Booking the gateway sent with this uuid (what the last booking_update carried)."""
    found = await request.app[store_key].latest_booking(
        request.match_info["uuid"], caller(request).products
    )
    if found is None:
        raise not_found("booking")
    return web.json_response(found.booking)


@describe(
    "The latest Bookings sent, newest first",
    tag="reconciliation",
    auth="api_key",
    query=BookingsQuery,
    ok=list[Booking],
    errors=[400],
    ok_headers={"Link": 'the next page: <url>; rel="next"'},
)
async def list_bookings(request: web.Request) -> web.Response:
    """The last Booking sent per booking, newest first by when the gateway sent it; filtered by
    ``supplierReference``, ``resellerReference`` and ``updatedSince``, paged with ``limit`` and
    the ``cursor`` of the ``Link: <…>; rel="next"`` header. Bookings sent during the walk come
    after the pages it started with (newest first again), so following Link misses none."""
    query = request.query
    limit = _limit(query.get("limit"))
    since = _instant(query.get("updatedSince"), "updatedSince")
    walk = _cursor(query.get("cursor")) or _Walk.starting(time.time())
    where = BookingFilter(
        products=list(caller(request).products),
        supplier_reference=query.get("supplierReference"),
        reseller_reference=query.get("resellerReference"),
        updated_since=_latest_of(since, walk.lower),
        after=walk.after,
        limit=limit + 1,  # one more says whether there is a next page
    )
    store = request.app[store_key]
    rows = await store.latest_bookings(where)
    response = web.json_response([row.booking for row in rows[:limit]])
    following: _Walk | None = None
    if len(rows) > limit:
        last = rows[limit - 1]
        following = _Walk((last.updated_at, last.key), walk.lower, walk.started)
    elif walk.started is not None:
        # This pass is done. A booking sent since it started (new, or one the walk had not reached
        # that changed and so moved ahead of the cursor) comes in one more pass, newest first.
        newer = where.model_copy(
            update={"updated_since": _latest_of(since, walk.started), "after": None, "limit": 1}
        )
        if await store.latest_bookings(newer):
            following = _Walk.starting(time.time(), lower=walk.started)
    if following is not None:
        next_url = request.rel_url.update_query(cursor=following.encode(), limit=limit)
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


@describe(
    "The latest Availability sent per day",
    tag="reconciliation",
    auth="api_key",
    query=AvailabilityQuery,
    ok=list[Availability],
    errors=[400],
)
async def list_availability(request: web.Request) -> web.Response:
    """The last Availability the gateway sent for each day of one product and option, in day
    order; days it never sent (and products the key may not see) are absent."""
    query = request.query
    product = _required(query.get("productId"), "productId")
    option = _required(query.get("optionId"), "optionId")
    first = _day(query.get("localDateStart"), "localDateStart")
    last = _day(query.get("localDateEnd"), "localDateEnd")
    if last < first:
        raise bad_request("localDateEnd: must not be before localDateStart")
    if (last - first).days >= MAX_DAYS:
        raise bad_request(f"localDateEnd: at most {MAX_DAYS} days from localDateStart")
    products = caller(request).products
    if "*" not in products and product not in products:
        return web.json_response([])
    found = await request.app[store_key].latest_availability(
        product, option, first.isoformat(), last.isoformat()
    )
    return web.json_response(found)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    # ASCII digits only ("²".isdigit() is true) and few of them (int() of thousands raises).
    if (
        not (raw.isascii() and raw.isdigit())
        or len(raw.lstrip("0")) > 3
        or not 1 <= int(raw) <= MAX_PAGE
    ):
        raise bad_request(f"limit: must be a whole number 1..{MAX_PAGE}")
    return int(raw)


def _instant(raw: str | None, name: str) -> float | None:
    if raw is None:
        return None
    try:
        if not RFC3339.match(raw):
            raise ValueError(raw)
        moment = datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise bad_request(
            f"{name}: not an RFC 3339 date-time with an offset (e.g. 2026-11-24T00:00:00Z)"
        ) from None


def _required(raw: str | None, name: str) -> str:
    if not raw:
        raise bad_request(f"{name}: required")
    return raw


def _day(raw: str | None, name: str) -> date:
    if not raw:
        raise bad_request(f"{name}: required (YYYY-MM-DD)")
    try:
        if not DAY.match(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise bad_request(f"{name}: not a date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class _Walk:
    """Where a walk through the pages is. A pass lists, newest first, the bookings recorded from
    ``lower`` until it ``started``; the rows before ``after`` are the ones still to come. A booking
    recorded once a pass started (booked meanwhile, or changed and so moved ahead of the cursor)
    is the next pass's: a walk misses none, and lists each version once."""

    after: tuple[float, str]  # (updated_at, key): this pass's rows still to come are before it
    lower: float | None  # the pass lists rows recorded at or after it (None: any)
    started: float | None  # when the pass started (None: a cursor from before passes)

    @classmethod
    def starting(cls, now: float, lower: float | None = None) -> _Walk:
        # (now, "") is after every row recorded before now, whatever its key.
        return cls(after=(now, ""), lower=lower, started=now)

    def encode(self) -> str:
        value = [*self.after, self.lower, self.started]
        return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def _latest_of(*moments: float | None) -> float | None:
    return max((moment for moment in moments if moment is not None), default=None)


def _number(value: Any, *, optional: bool = False) -> bool:
    if value is None:
        return optional
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cursor(raw: str | None) -> _Walk | None:
    """The walk a cursor from a Link header continues; anything else is a 400. A cursor of two
    items ([updated_at, key]) is one given before walks had passes: it goes on without a next
    pass."""
    if raw is None:
        return None
    try:
        value: Any = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        value = None
    if (
        isinstance(value, list)
        and len(value) in (2, 4)
        and _number(value[0])
        and isinstance(value[1], str)
        and all(_number(item, optional=True) for item in value[2:])
    ):
        lower, started = (value[2], value[3]) if len(value) == 4 else (None, None)
        return _Walk(
            after=(float(value[0]), value[1]),
            lower=None if lower is None else float(lower),
            started=None if started is None else float(started),
        )
    raise bad_request("cursor: not a cursor this API gave (take it from the Link header)")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/octo/bookings", list_bookings)
    app.router.add_get("/octo/bookings/{uuid}", get_booking)
    app.router.add_get("/octo/availability", list_availability)
