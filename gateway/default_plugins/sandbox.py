"""A sandbox PMS API served by the gateway itself, from the bundled vendor samples.

Off unless ``[sandbox] enabled = true``. With it (and a source's ``api_url = "sandbox"``), an
operator can push a sample (``gateway push-sample``) and watch a subscription receive OCTO events
end to end on a machine with no PMS account and no network.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from gateway.appkeys import config_key
from gateway.errors import OctoError
from gateway.hookspecs import hookimpl
from gateway.samples import load


def _enabled(request: web.Request) -> None:
    if not request.app[config_key].sandbox.enabled:
        raise OctoError(404, "the sandbox PMS API is off ([sandbox] enabled = false)")


async def channex_revision(request: web.Request) -> web.Response:
    _enabled(request)
    answer = copy.deepcopy(load("channex-booking-revision-1.json"))
    revision_id = request.match_info["id"]
    answer["data"]["id"] = revision_id
    answer["data"]["attributes"]["id"] = revision_id
    return web.json_response(answer)


async def channex_feed(request: web.Request) -> web.Response:
    _enabled(request)
    return web.json_response(load("channex-booking-revision-feed-1.json"))


async def channex_ack(request: web.Request) -> web.Response:
    _enabled(request)
    return web.json_response({"meta": {"message": "Success"}})


async def beds24_bookings(request: web.Request) -> web.Response:
    _enabled(request)
    booking = copy.deepcopy(load("beds24-v2-booking-1.json")[0]["booking"])
    wanted = request.query.get("id", "")
    if wanted.isdigit():
        booking["id"] = int(wanted)
    return web.json_response({"success": True, "type": "booking", "count": 1, "data": [booking]})


async def beds24_calendar(request: web.Request) -> web.Response:
    """A calendar made up per day (the vendor documents no sample): stable for a given day, so
    repeated syncs change nothing and only real changes are sent."""
    _enabled(request)
    try:
        start = date.fromisoformat(request.query["startDate"])
        end = date.fromisoformat(request.query["endDate"])
    except (KeyError, ValueError):
        raise OctoError(400, "startDate and endDate (YYYY-MM-DD) are required") from None
    room = request.query.get("roomId", "0")
    days: list[dict[str, Any]] = []
    day = start
    while day <= end and len(days) < 800:
        blackout = day.toordinal() % 13 == 0
        days.append(
            {
                "from": day.isoformat(),
                "to": day.isoformat(),
                "numAvail": day.toordinal() % 6,
                "override": "blackout" if blackout else "none",
            }
        )
        day += timedelta(days=1)
    item = {
        "roomId": int(room) if room.isdigit() else room,
        "propertyId": 125517,
        "name": "Sandbox room",
        "calendar": days,
    }
    return web.json_response({"success": True, "type": "calendar", "count": 1, "data": [item]})


received_key = web.AppKey("sandbox_received", deque[dict[str, Any]])


async def receiver_post(request: web.Request) -> web.Response:
    """A webhook receiver for demos: keeps the last 100 deliveries in memory."""
    _enabled(request)
    if received_key not in request.app:
        raise OctoError(404, "the sandbox receiver is not running")
    body = await request.read()
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body.decode("utf-8", "replace")
    request.app[received_key].appendleft(
        {
            "webhook-id": request.headers.get("webhook-id"),
            "webhook-timestamp": request.headers.get("webhook-timestamp"),
            "webhook-signature": request.headers.get("webhook-signature"),
            "body": parsed,
        }
    )
    return web.json_response({"received": True})


async def receiver_get(request: web.Request) -> web.Response:
    _enabled(request)
    return web.json_response(list(request.app.get(received_key, ())))


@hookimpl
def startup(app: web.Application) -> None:
    app[received_key] = deque(maxlen=100)


@hookimpl
def register_routes(register: Any) -> None:
    register("POST", "/sandbox/receiver", receiver_post)
    register("GET", "/sandbox/receiver", receiver_get)
    register("GET", "/sandbox/channex/booking_revisions/feed", channex_feed)
    register("GET", "/sandbox/channex/booking_revisions/{id}", channex_revision)
    register("POST", "/sandbox/channex/booking_revisions/{id}/ack", channex_ack)
    register("GET", "/sandbox/beds24/bookings", beds24_bookings)
    register("GET", "/sandbox/beds24/inventory/rooms/calendar", beds24_calendar)
