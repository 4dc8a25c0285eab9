"""Console sign-in: a session cookie signed with the tenant's own api key, CSRF tokens, flashes.

The cookie holds the key's name, an expiry and a random nonce, signed with HMAC-SHA256 keyed by
that api key: no session table, every gateway process sharing the config accepts it, and changing
or removing a key ends its sessions at once. Signing out forgets the nonce in this process (and
the browser drops the cookie). The CSRF token of a session is another HMAC of its nonce; every
form carries it and every POST is refused without it. The cookie is HttpOnly, SameSite=Strict,
limited to /console, and Secure when the console is served over https (directly, or behind a
proxy named by an https ``server.public_url``); nothing secret ever goes in a URL.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from gateway.appkeys import config_key
from gateway.config import ApiKey
from gateway.web.auth import key_for_token, tokens_equal
from gateway.web.webhooks import api_key_key

COOKIE = "gateway_console"
PRE_COOKIE = "gateway_console_signin"  # the sign-in form's own CSRF token (double submit)
FLASH_COOKIE = "gateway_console_flash"
SESSION_SECONDS = 8 * 3600
PATH = "/console"


@dataclass(frozen=True)
class Session:
    key: ApiKey
    nonce: str
    expires: float

    @property
    def csrf(self) -> str:
        return _sign(self.key.key, f"csrf:{self.nonce}")


class Revoked:
    """Nonces of sessions signed out in this process, kept until they would have expired.

    A heap finds the expired ones, so a sign-out costs O(log n): rebuilding the whole set on each
    one let a tenant signing in and out in a loop block the event loop longer with every round.
    At most ``limit`` are kept (the ones closest to expiry go first), bounding memory too."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._until: dict[str, float] = {}
        self._expiring: list[tuple[float, str]] = []  # (until, nonce), soonest first

    def add(self, nonce: str, until: float) -> None:
        now = time.time()
        while self._expiring and (self._expiring[0][0] <= now or len(self._expiring) >= self.limit):
            _, gone = heapq.heappop(self._expiring)
            self._until.pop(gone, None)
        self._until[nonce] = until
        heapq.heappush(self._expiring, (until, nonce))

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, nonce: str) -> bool:
        return self._until.get(nonce, 0) > time.time()


revoked_key = web.AppKey("console_revoked", Revoked)


def _sign(secret: str, message: str) -> str:
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_in(request: web.Request, response: web.StreamResponse, key: ApiKey) -> Session:
    session = Session(key, secrets.token_urlsafe(18), time.time() + SESSION_SECONDS)
    payload = _b64(
        json.dumps({"k": key.name, "e": int(session.expires), "n": session.nonce}).encode()
    )
    value = f"{payload}.{_sign(key.key, 'session:' + payload)}"
    _set_cookie(request, response, COOKIE, value, SESSION_SECONDS)
    response.del_cookie(PRE_COOKIE, path=PATH)
    return session


def current_session(request: web.Request) -> Session | None:
    """The session the request's cookie proves, or None (missing, forged, expired, revoked)."""
    value = request.cookies.get(COOKIE, "")
    payload, _, signature = value.partition(".")
    if not payload or not signature:
        return None
    try:
        claims = json.loads(_unb64(payload))
        name, expires, nonce = str(claims["k"]), float(claims["e"]), str(claims["n"])
    except (ValueError, KeyError, TypeError, RecursionError):  # anyone can send any cookie
        return None
    # Keys sharing a tenant name (one rotated in beside the other) each sign their own sessions:
    # the session is the one whose key signed it. Every candidate is checked, none skipped.
    key: ApiKey | None = None
    for candidate in request.app[config_key].api_keys:
        if candidate.name == name and tokens_equal(
            signature, _sign(candidate.key, "session:" + payload)
        ):
            key = candidate
    if key is None:
        return None
    if expires <= time.time() or nonce in request.app[revoked_key]:
        return None
    session = Session(key, nonce, expires)
    request[api_key_key] = key  # the API's own tenant checks (own_subscription, caller) apply
    return session


def sign_out(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    request.app[revoked_key].add(session.nonce, session.expires)
    response.del_cookie(COOKIE, path=PATH)


def check_csrf(session: Session, given: str | None) -> bool:
    return bool(given) and tokens_equal(given or "", session.csrf)


def find_key(request: web.Request, token: str) -> ApiKey | None:
    return key_for_token(token, request.app[config_key].api_keys)


def sign_in_token(request: web.Request) -> str:
    """The sign-in form's CSRF token: the same value goes in a cookie and in the form."""
    return request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(18)


def set_sign_in_token(request: web.Request, response: web.StreamResponse, token: str) -> None:
    _set_cookie(request, response, PRE_COOKIE, token, 3600)


def check_sign_in_token(request: web.Request, given: str | None) -> bool:
    expected = request.cookies.get(PRE_COOKIE, "")
    return bool(given) and bool(expected) and tokens_equal(given or "", expected)


def set_flash(
    request: web.Request, response: web.StreamResponse, session: Session, kind: str, text: str
) -> None:
    """A message for the next page (after a redirect), signed so only the gateway sets one."""
    payload = _b64(json.dumps({"k": kind, "t": text[:2000]}).encode())
    value = f"{payload}.{_sign(session.key.key, 'flash:' + payload)}"
    _set_cookie(request, response, FLASH_COOKIE, value, 60)


def take_flash(
    request: web.Request, response: web.StreamResponse, session: Session
) -> tuple[str, str] | None:
    value = request.cookies.get(FLASH_COOKIE)
    if not value:
        return None
    response.del_cookie(FLASH_COOKIE, path=PATH)
    payload, _, signature = value.partition(".")
    if not tokens_equal(signature, _sign(session.key.key, "flash:" + payload)):
        return None
    try:
        found = json.loads(_unb64(payload))
        return str(found["k"]), str(found["t"])
    except (ValueError, KeyError, TypeError):
        return None


def _set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="Strict",
        secure=served_over_https(request),
    )


def served_over_https(request: web.Request) -> bool:
    """Whether browsers reach the console over https: this connection is TLS, or the gateway sits
    behind a proxy that ends TLS (``server.public_url`` is https) and so sees plain http here."""
    public_url = request.app[config_key].server.public_url or ""
    return request.secure or public_url.lower().startswith("https://")
