"""OCTO error bodies and the middleware that guarantees every failure answers with one."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from gateway.appkeys import config_key
from gateway.store.errors import StorageUnavailable
from gateway.web.server import BodyTimeout

log = logging.getLogger(__name__)

# Seconds a sender is asked to wait after a 503 for a storage fault (disk full, locked, ...).
STORAGE_RETRY_AFTER = 5

CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    408: "REQUEST_TIMEOUT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


# What the metrics count for a request whose client left before its answer (nginx's 499).
CLIENT_GONE = 499


class OctoError(Exception):
    """Raise from a handler to answer ``{"error", "errorMessage"}`` with ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def bad_request(message: str, **extra: Any) -> OctoError:
    return OctoError(400, message, **extra)


def not_found(what: str = "resource") -> OctoError:
    return OctoError(404, f"{what} not found")


def error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {"error": CODES.get(status, "ERROR"), "errorMessage": message, **extra}
    return web.json_response(body, status=status, headers=headers)


def storage_unavailable(exc: StorageUnavailable) -> web.Response:
    """503 with Retry-After: nothing was stored, the sender tries again. The store logged the
    fault (once per interval), so the request is not logged here."""
    return error_response(
        503,
        f"storage unavailable, try again later: {exc.reason}",
        headers={"Retry-After": str(STORAGE_RETRY_AFTER)},
    )


def describe_validation_error(exc: ValidationError) -> str:
    """Name every offending field: ``url: field required; retryOnError: Input should be...``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        message = error["msg"]
        if error["type"] == "missing":
            message = "field required"
        elif error["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The OCTO error answer for what a handler raised (raised again: an HTTPException below
    400, a redirect). Called by the app's one middleware (``gateway.web.front``)."""
    if isinstance(exc, OctoError):
        return error_response(exc.status, exc.message, **exc.extra)
    if isinstance(exc, StorageUnavailable):
        return storage_unavailable(exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[config_key].server.max_body_bytes
        return error_response(413, f"request body too large (limit {limit} bytes)")
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return error_response(exc.status, exc.reason)
    if isinstance(exc, BodyTimeout):
        timed_out = error_response(408, str(exc))
        timed_out.force_close()
        return timed_out
    if isinstance(exc, ConnectionResetError) and (
        request.transport is None or request.transport.is_closing()
    ):
        # The client went away mid-request (mid-body, say): nobody to answer, nothing broken.
        log.info("client of %s %s went away before the answer", request.method, request.path)
        return web.Response(status=CLIENT_GONE, reason="Client Closed Request")
    # Last resort: the handler has a bug. Log it, never leak a traceback to the caller.
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal error; it has been logged")
