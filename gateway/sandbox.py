"""The sandbox: a demo webhook receiver, and the switch for the source plugins' sandbox PMS APIs.

Off unless ``[sandbox] enabled = true``. With it (and a source's ``api_url = "sandbox"``), an
operator can push a sample (``gateway push-sample``) and watch a subscription receive OCTO events
end to end on a machine with no PMS account and no network. Each source plugin serves its own
sandbox PMS API under ``/sandbox/<source>`` from its bundled vendor samples, guarded by
``require_sandbox``.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from aiohttp import web

from gateway.appkeys import config_key
from gateway.hookspecs import RegisterRoute, hookimpl
from gateway.web.errors import OctoError
from gateway.web.openapi import describe


def require_sandbox(request: web.Request) -> None:
    """Answer 404 unless the sandbox is on; every sandbox handler calls it first."""
    if not request.app[config_key].sandbox.enabled:
        raise OctoError(404, "the sandbox PMS API is off ([sandbox] enabled = false)")


received_key = web.AppKey("sandbox_received", deque[dict[str, Any]])


@describe(
    "Sandbox demo receiver: keep a delivery",
    tag="sandbox",
    body=Any,
    body_required=False,
    ok=dict[str, bool],
    errors=[404],
)
async def receiver_post(request: web.Request) -> web.Response:
    """A webhook receiver for demos: keeps the last 100 deliveries in memory."""
    require_sandbox(request)
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


@describe(
    "Sandbox demo receiver: the last 100 deliveries",
    tag="sandbox",
    ok=list[dict[str, Any]],
    errors=[404],
)
async def receiver_get(request: web.Request) -> web.Response:
    require_sandbox(request)
    return web.json_response(list(request.app.get(received_key, ())))


@hookimpl
def startup(app: web.Application) -> None:
    app[received_key] = deque(maxlen=100)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    register("POST", "/sandbox/receiver", receiver_post)
    register("GET", "/sandbox/receiver", receiver_get)
