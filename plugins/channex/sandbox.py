"""The Channex sandbox PMS API under ``/sandbox/channex``, answered from the bundled vendor samples."""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

from gateway.plugin_api import describe, require_sandbox

SAMPLES = resources.files(__package__).joinpath("samples")


@cache
def load_sample(name: str) -> Any:
    """A bundled vendor sample, parsed (cached: callers must not change what they get)."""
    return json.loads(SAMPLES.joinpath(name).read_text(encoding="utf-8"))


@describe("Sandbox Channex API: a booking revision", tag="sandbox", ok=dict[str, Any], errors=[404])
async def channex_revision(request: web.Request) -> web.Response:
    require_sandbox(request)
    answer = copy.deepcopy(load_sample("channex-booking-revision-1.json"))
    revision_id = request.match_info["id"]
    answer["data"]["id"] = revision_id
    answer["data"]["attributes"]["id"] = revision_id
    return web.json_response(answer)


@describe(
    "Sandbox Channex API: the booking revisions feed",
    tag="sandbox",
    ok=dict[str, Any],
    errors=[404],
)
async def channex_feed(request: web.Request) -> web.Response:
    require_sandbox(request)
    return web.json_response(load_sample("channex-booking-revision-feed-1.json"))


@describe(
    "Sandbox Channex API: acknowledge a booking revision",
    tag="sandbox",
    ok=dict[str, Any],
    errors=[404],
)
async def channex_ack(request: web.Request) -> web.Response:
    require_sandbox(request)
    return web.json_response({"meta": {"message": "Success"}})


ROUTES = [
    ("GET", "/sandbox/channex/booking_revisions/feed", channex_feed),
    ("GET", "/sandbox/channex/booking_revisions/{id}", channex_revision),
    ("POST", "/sandbox/channex/booking_revisions/{id}/ack", channex_ack),
]
