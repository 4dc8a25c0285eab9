"""The Beds24 sandbox PMS API under ``/sandbox/beds24``, answered from the bundled vendor samples."""

from __future__ import annotations

import copy
import json
from datetime import date, timedelta
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.plugin_api import OctoError, describe, require_sandbox

SAMPLES = resources.files(__package__).joinpath("samples")


@cache
def load_sample(name: str) -> Any:
    """A bundled vendor sample, parsed (cached: callers must not change what they get)."""
    return json.loads(SAMPLES.joinpath(name).read_text(encoding="utf-8"))


@describe("Sandbox Beds24 API: read a booking", tag="sandbox", ok=dict[str, Any], errors=[404])
async def beds24_bookings(request: web.Request) -> web.Response:
    require_sandbox(request)
    booking = copy.deepcopy(load_sample("beds24-v2-booking-1.json")[0]["booking"])
    wanted = request.query.get("id", "")
    if wanted.isdigit():
        booking["id"] = int(wanted)
    return web.json_response({"success": True, "type": "booking", "count": 1, "data": [booking]})


class CalendarQuery(BaseModel):
    startDate: date
    endDate: date
    roomId: str | None = None


@describe(
    "Sandbox Beds24 API: a room's calendar",
    tag="sandbox",
    ok=dict[str, Any],
    query=CalendarQuery,
    errors=[400, 404],
)
async def beds24_calendar(request: web.Request) -> web.Response:
    """A calendar made up per day (the vendor documents no sample): stable for a given day, so
    repeated syncs change nothing and only real changes are sent."""
    require_sandbox(request)
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
        if day == date.max:
            break
        day += timedelta(days=1)
    item = {
        "roomId": int(room) if room.isdigit() else room,
        "propertyId": 125517,
        "name": "Sandbox room",
        "calendar": days,
    }
    return web.json_response({"success": True, "type": "calendar", "count": 1, "data": [item]})


ROUTES = [
    ("GET", "/sandbox/beds24/bookings", beds24_bookings),
    ("GET", "/sandbox/beds24/inventory/rooms/calendar", beds24_calendar),
]
