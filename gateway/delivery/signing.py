"""Standard Webhooks signatures (symmetric, version ``v1``).

Every delivery carries three headers (https://www.standardwebhooks.com, spec 1.0.0):

- ``webhook-id``: the message id, the same on every retry of one message;
- ``webhook-timestamp``: Unix seconds of this attempt;
- ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` entries over
  ``"{id}.{timestamp}.{body}"``, one per secret currently valid for the subscription
  (two while a rotated-out secret is still honoured).

A secret is ``whsec_`` + base64 of the key bytes. Its body must be signed exactly as sent:
re-serialising JSON breaks the signature. Receivers verify with any Standard Webhooks library; the
tests check every signature with the reference one (``standardwebhooks`` on PyPI).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Sequence
from functools import lru_cache
from secrets import token_bytes
from typing import Any

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def generate_secret() -> str:
    """A new random secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of ``secret``, with or without its ``whsec_`` prefix.

    Missing ``=`` padding is tolerated (as in the reference Python library); characters
    outside the standard base64 alphabet and an empty key raise ``ValueError``.
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"webhook secret is not valid base64: {exc}") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


@lru_cache(maxsize=1024)
def _hmac_states(secret: str) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) of ``secret`` with its key blocks hashed once: the inner and outer
    SHA-256 states after ``K ^ ipad`` and ``K ^ opad``. Copying them per message costs about half
    of ``hmac.digest``, which looks the digest up in OpenSSL and hashes both key blocks each time."""
    key = secret_key(secret)
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(key.translate(_IPAD))
    outer = hashlib.sha256(key.translate(_OPAD))
    return inner, outer


_BLOCK = 64  # SHA-256's block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def sign(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """The ``v1,<base64>`` signature of one message with one secret."""
    # Runtime checks: the id and timestamp are joined with full stops, so neither may hold one.
    if not msg_id or "." in msg_id:
        raise ValueError(f"invalid webhook id {msg_id!r}: must be non-empty, without '.'")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"invalid webhook timestamp {timestamp!r}: must be a non-negative int")
    inner_state, outer_state = _hmac_states(secret)
    inner = inner_state.copy()
    inner.update(f"{msg_id}.{timestamp}.".encode())
    inner.update(body)
    outer = outer_state.copy()
    outer.update(inner.digest())
    return "v1," + binascii.b2a_base64(outer.digest(), newline=False).decode("ascii")


def signature_header(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated.

    During a secret rotation pass the new and the old secret; receivers accept the message
    if any entry matches the secret they know.
    """
    if not secrets:
        raise ValueError("at least one secret is needed to sign a webhook")
    if len(secrets) == 1:  # the common case, outside a rotation
        return sign(msg_id, timestamp, body, secrets[0])
    return " ".join([sign(msg_id, timestamp, body, secret) for secret in secrets])


def webhook_headers(
    msg_id: str, body: bytes, secrets: Sequence[str], now: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt made at ``now``
    (Unix seconds, default: the current time)."""
    timestamp = int(time.time()) if now is None else now
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(msg_id, timestamp, body, secrets),
    }
