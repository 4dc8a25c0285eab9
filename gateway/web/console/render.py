"""How console handlers answer: pages rendered with the console's templates, the sign-in and
CSRF guard every page goes through, redirects with a flash, and the headers every page carries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDictProxy

from gateway.web.console.session import Session, check_csrf, current_session, set_flash, take_flash
from gateway.web.errors import OctoError, bad_request
from gateway.web.openapi import hidden
from gateway.web.pages import page_environment

PageHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Only the gateway's own script and stylesheet run; no framing; nothing leaks in a Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def render(
    request: web.Request,
    session: Session | None,
    template: str,
    *,
    status: int = 200,
    fragment: bool = False,
    **context: Any,
) -> web.Response:
    """A console template as a page (``fragment``: a piece of one, refreshed in place, which
    leaves the flash message for the page)."""
    response = web.Response(status=status, content_type="text/html")
    flash = take_flash(request, response, session) if session and not fragment else None
    response.text = (
        page_environment()
        .get_template(f"console/{template}")
        .render(session=session, flash=flash, path=request.path, status_code=status, **context)
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(
    request: web.Request, location: str, session: Session, flash: tuple[str, str] | None = None
) -> web.Response:
    """303 to ``location`` (a path of ours), with a message for the page it leads to."""
    assert location.startswith("/console"), location  # never redirect elsewhere
    response = web.Response(status=303, headers={"Location": location})
    if flash is not None:
        set_flash(request, response, session, *flash)
    return response


def page(handler: PageHandler, *, admin: bool = False) -> Handler:
    """Guard a console handler: a session is required (a GET without one goes to sign-in), every
    POST must carry the session's CSRF token, ``admin`` pages need an admin key, and an OCTO
    error from the shared API code (404 for another tenant's subscription) becomes a page."""

    @hidden
    async def guarded(request: web.Request) -> web.StreamResponse:
        session = current_session(request)
        if session is None:
            if request.method == "GET":
                return web.Response(status=303, headers={"Location": "/console/sign-in"})
            return render(request, None, "error.html", status=403, message="Sign in first.")
        if request.method == "POST":
            form = await read_form(request)
            token = form.get("csrf")
            if not check_csrf(session, token if isinstance(token, str) else None):
                return render(
                    request,
                    session,
                    "error.html",
                    status=403,
                    message="This form has no valid CSRF token; reload the page and try again.",
                )
        if admin and not session.key.admin:
            return render(
                request, session, "error.html", status=403, message="This page is for admins."
            )
        try:
            return await handler(request, session)
        except OctoError as exc:
            return render(request, session, "error.html", status=exc.status, message=exc.message)

    guarded.__name__ = handler.__name__
    return guarded


def admin_page(handler: PageHandler) -> Handler:
    return page(handler, admin=True)


async def read_form(
    request: web.Request,
) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The posted form. A body aiohttp cannot read as one (bytes that are not UTF-8, a multipart
    body without its boundary, an unknown charset) is the client's error: a 400, not a 500."""
    try:
        return await request.post()
    except (ValueError, LookupError, RuntimeError, TypeError, HttpProcessingError) as exc:
        raise bad_request(f"the form could not be read: {exc}") from None


async def form_text(request: web.Request, name: str) -> str:
    value = (await read_form(request)).get(name)
    return value.strip() if isinstance(value, str) else ""
