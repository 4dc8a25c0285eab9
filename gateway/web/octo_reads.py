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
    the ``cursor`` of the ``Link: <…>; rel="next"`` header."""
    query = request.query
    limit = _limit(query.get("limit"))
    where = BookingFilter(
        products=list(caller(request).products),
        supplier_reference=query.get("supplierReference"),
        reseller_reference=query.get("resellerReference"),
        updated_since=_instant(query.get("updatedSince"), "updatedSince"),
        after=_cursor(query.get("cursor")),
        limit=limit + 1,  # one more says whether there is a next page
    )
    rows = await request.app[store_key].latest_bookings(where)
    response = web.json_response([row.booking for row in rows[:limit]])
    if len(rows) > limit:
        last = rows[limit - 1]
        next_url = request.rel_url.update_query(
            cursor=_encode_cursor(last.updated_at, last.key), limit=limit
        )
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


def _encode_cursor(updated_at: float, key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([updated_at, key])).decode().rstrip("=")


def _cursor(raw: str | None) -> tuple[float, str] | None:
    """The position a cursor from a Link header names; anything else is a 400."""
    if raw is None:
        return None
    try:
        value: Any = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        value = None
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (int, float))
        and not isinstance(value[0], bool)
        and math.isfinite(value[0])
        and isinstance(value[1], str)
    ):
        return float(value[0]), value[1]
    raise bad_request("cursor: not a cursor this API gave (take it from the Link header)")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/octo/bookings", list_bookings)
    app.router.add_get("/octo/bookings/{uuid}", get_booking)
    app.router.add_get("/octo/availability", list_availability)
