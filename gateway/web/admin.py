"""/admin: operators inspect and replay stored pushes (api keys with admin = true)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.appkeys import store_key
from gateway.models import PushState
from gateway.web.errors import not_found
from gateway.web.ingest import intake_key
from gateway.web.openapi import describe
from gateway.web.schemas import Push
from gateway.web.webhooks import require_admin


class PushesQuery(BaseModel):
    state: PushState | None = Field(default=None, description="only pushes in this state")


@describe(
    "A stored push with its state and error", tag="admin", auth="admin", ok=Push, errors=[404]
)
async def get_push(request: web.Request) -> web.Response:
    require_admin(request)
    push = await request.app[store_key].get_push(request.match_info["id"])
    if push is None:
        raise not_found(f"push {request.match_info['id']}")
    return web.json_response(push.admin_view())


@describe("Process a stored push again", tag="admin", auth="admin", ok=Push, errors=[404])
async def replay_push(request: web.Request) -> web.Response:
    require_admin(request)
    push = await request.app[store_key].replay_push(request.match_info["id"])
    if push is None:
        raise not_found(f"push {request.match_info['id']}")
    request.app[intake_key].wake()
    return web.json_response(push.admin_view())


@describe(
    "Stored pushes, newest first",
    tag="admin",
    auth="admin",
    query=PushesQuery,
    ok=list[Push],
    errors=[400],
)
async def list_pushes(request: web.Request) -> web.Response:
    require_admin(request)
    state = request.query.get("state")
    if state not in (None, "accepted", "processed", "failed"):
        raise web.HTTPBadRequest(reason="state: must be accepted, processed or failed")
    pushes = await request.app[store_key].list_pushes(state)  # type: ignore[arg-type]
    return web.json_response([p.admin_view() for p in pushes])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/pushes", list_pushes)
    app.router.add_get("/admin/pushes/{id}", get_push)
    app.router.add_post("/admin/pushes/{id}/replay", replay_push)
