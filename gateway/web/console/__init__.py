"""/console: the operator console, pages rendered on the server for people to look at.

Resellers sign in with their api key and see their own subscriptions, deliveries and replays;
admins also see stored pushes and the live queue. Pages are left out of /openapi.json.
"""

from __future__ import annotations

from aiohttp import web

from gateway.web.console import operators, subscriptions
from gateway.web.console.render import page, read_form, render
from gateway.web.console.session import (
    Revoked,
    Session,
    check_sign_in_token,
    current_session,
    find_key,
    revoked_key,
    set_sign_in_token,
    sign_in,
    sign_in_token,
    sign_out,
)
from gateway.web.openapi import hidden
from gateway.web.pages import static_asset


@hidden
async def home(request: web.Request) -> web.StreamResponse:
    target = "/console/subscriptions" if current_session(request) else "/console/sign-in"
    return web.Response(status=303, headers={"Location": target})


@hidden
async def sign_in_page(request: web.Request) -> web.StreamResponse:
    if current_session(request) is not None:
        return web.Response(status=303, headers={"Location": "/console/subscriptions"})
    return _sign_in_form(request)


@hidden
async def sign_in_post(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    given, typed = form.get("csrf"), form.get("api_key")
    if not check_sign_in_token(request, given if isinstance(given, str) else None):
        return _sign_in_form(request, 403, "The form expired; try again.")
    key = find_key(request, typed.strip()) if isinstance(typed, str) else None
    if key is None:
        return _sign_in_form(request, 401, "That api key is not known.")
    response = web.Response(status=303, headers={"Location": "/console/subscriptions"})
    sign_in(request, response, key)
    return response


def _sign_in_form(
    request: web.Request, status: int = 200, error: str | None = None
) -> web.Response:
    token = sign_in_token(request)
    response = render(request, None, "sign_in.html", status=status, token=token, error=error)
    set_sign_in_token(request, response, token)
    return response


async def sign_out_post(request: web.Request, session: Session) -> web.StreamResponse:
    response = web.Response(status=303, headers={"Location": "/console/sign-in"})
    sign_out(request, response, session)
    return response


@hidden
async def script(request: web.Request) -> web.Response:
    return web.Response(
        body=static_asset("console.js"),
        content_type="text/javascript",
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def add_routes(app: web.Application) -> None:
    app[revoked_key] = Revoked()
    app.router.add_get("/console", home)
    app.router.add_get("/console/sign-in", sign_in_page)
    app.router.add_post("/console/sign-in", sign_in_post)
    app.router.add_post("/console/sign-out", page(sign_out_post))
    app.router.add_get("/console/static/console.js", script)
    subscriptions.add_routes(app)
    operators.add_routes(app)


__all__ = ["add_routes"]
