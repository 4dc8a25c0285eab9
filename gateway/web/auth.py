"""Bearer api keys and shared ingest tokens, checked in constant time."""

from __future__ import annotations

import hmac

from gateway.config import ApiKey
from gateway.web.errors import OctoError


def tokens_equal(given: str, expected: str) -> bool:
    # aiohttp reads header bytes that are not UTF-8 as lone surrogates: "surrogatepass" encodes
    # them (to bytes no configured secret holds) instead of raising, which was a 500.
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def find_api_key(header: str | None, keys: list[ApiKey]) -> ApiKey:
    """The key an ``Authorization: Bearer`` header names, or a 401."""
    if not header:
        raise OctoError(401, "missing Authorization header (expected: Bearer <api key>)")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise OctoError(401, "Authorization header must be: Bearer <api key>")
    match = key_for_token(token, keys)
    if match is None:
        raise OctoError(401, "invalid api key")
    return match


def key_for_token(token: str, keys: list[ApiKey]) -> ApiKey | None:
    """The key whose secret is ``token``, or None (the API's header and the console's sign-in)."""
    match: ApiKey | None = None
    # Compare against every key, without stopping early, so timing tells nothing.
    for key in keys:
        if tokens_equal(token, key.key):
            match = key
    return match
