"""Standard Webhooks signing: every vector of shared/standard-webhooks-vectors.md, and every
signature checked by the independent reference library (``standardwebhooks`` on PyPI), the way a
subscriber verifies it."""

from __future__ import annotations

import base64
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as ReferenceVerificationError

from gateway.delivery.signing import (
    generate_secret,
    secret_key,
    sign,
    signature_header,
    webhook_headers,
)

# Vector A (python, go, javascript, php, ruby, csharp, java reference tests)
SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ID_A = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS_A = 1614265330
BODY_A = b'{"test": 2432232314}'
SIG_A = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# Vector B (rust reference test)
SECRET_B = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
ID_B = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"
TS_B = 1649367553
BODY_B = b'{"email":"test@example.com","username":"test_user"}'
SIG_B = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="

POSITIVE = [
    pytest.param(SECRET_A, ID_A, TS_A, BODY_A, SIG_A, id="vector-A"),
    pytest.param(SECRET_B, ID_B, TS_B, BODY_B, SIG_B, id="vector-B"),
]

# --- positive vectors ---------------------------------------------------------------------


@pytest.mark.parametrize(("secret", "msg_id", "timestamp", "body", "expected"), POSITIVE)
def test_sign_matches_vector(
    secret: str, msg_id: str, timestamp: int, body: bytes, expected: str
) -> None:
    assert sign(msg_id, timestamp, body, secret) == expected
    assert len(expected) == len("v1,") + 44


@pytest.mark.parametrize(("secret", "msg_id", "timestamp", "body", "expected"), POSITIVE)
def test_reference_library_signs_vector_like_us(
    secret: str, msg_id: str, timestamp: int, body: bytes, expected: str
) -> None:
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    assert Webhook(secret).sign(msg_id, when, body.decode()) == expected


def test_vector_keys_are_24_bytes() -> None:
    assert len(secret_key(SECRET_A)) == 24
    assert len(secret_key(SECRET_B)) == 24


def verified(body: bytes, headers: dict[str, str], secret: str) -> None:
    """Verify as a subscriber does, with the reference library (its clock: headers made now)."""
    Webhook(secret).verify(body, headers, json_parse=False)


# --- what a subscriber's verification sees ------------------------------------------------


def test_a_changed_body_or_id_fails_verification() -> None:
    headers = webhook_headers(ID_A, BODY_A, [SECRET_A])
    verified(BODY_A, headers, SECRET_A)
    with pytest.raises(ReferenceVerificationError):
        verified(b'{"test":2432232314}', headers, SECRET_A)
    with pytest.raises(ReferenceVerificationError):
        verified(BODY_A, {**headers, "webhook-id": "msg_other"}, SECRET_A)


def test_an_old_attempt_fails_verification() -> None:
    # The timestamp is the attempt's: a retry is signed again, never replayed with old headers.
    stale = int(time.time()) - 5 * 60 - 1
    with pytest.raises(ReferenceVerificationError, match="too old"):
        verified(BODY_A, webhook_headers(ID_A, BODY_A, [SECRET_A], now=stale), SECRET_A)


@pytest.mark.parametrize("secret", [SECRET_A, SECRET_A.removeprefix("whsec_")])
def test_secret_with_and_without_prefix(secret: str) -> None:
    assert sign(ID_A, TS_A, BODY_A, secret) == SIG_A
    verified(BODY_A, webhook_headers(ID_A, BODY_A, [secret]), SECRET_A)


@pytest.mark.parametrize(
    ("unpadded", "padded"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS="),
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr=="),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr=="),
    ],
    ids=["needs-1-pad", "needs-2-pad", "needs-2-pad-prefixed"],
)
def test_unpadded_secret_verifies(unpadded: str, padded: str) -> None:
    assert secret_key(unpadded) == secret_key(padded)
    signature = sign(ID_A, TS_A, BODY_A, padded)
    verified(BODY_A, webhook_headers(ID_A, BODY_A, [padded]), unpadded)
    assert Webhook(unpadded).sign(ID_A, datetime.fromtimestamp(TS_A, tz=UTC), BODY_A.decode()) == (
        signature
    )


@pytest.mark.parametrize("secret", ["", "whsec_"])
def test_empty_secret_is_an_error(secret: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        secret_key(secret)
    with pytest.raises(ValueError, match="empty"):
        sign(ID_A, TS_A, BODY_A, secret)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_a", "whsec_MfKQ-r8_"])
def test_secret_outside_base64_alphabet_is_an_error(secret: str) -> None:
    with pytest.raises(ValueError, match="not valid base64"):
        secret_key(secret)


@pytest.mark.parametrize(
    "timestamp",
    [161426533.0, "161426533.0", "invalid timestamp", -161426533, True],
    ids=["float", "float-string", "string", "negative", "bool"],
)
def test_sign_rejects_invalid_timestamp(timestamp: Any) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        sign(ID_A, timestamp, BODY_A, SECRET_A)


@pytest.mark.parametrize("msg_id", ["", "msg.1"])
def test_sign_rejects_invalid_id(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id"):
        sign(msg_id, TS_A, BODY_A, SECRET_A)


# --- our API: secrets, rotation, headers ---------------------------------------------------


def test_generate_secret() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_")
    assert first != second
    assert len(secret_key(first)) == 32
    assert base64.b64encode(secret_key(first)).decode() == first.removeprefix("whsec_")


def test_signature_header_signs_with_every_secret_in_order() -> None:
    header = signature_header(ID_A, TS_A, BODY_A, [SECRET_B, SECRET_A])
    assert header == f"{sign(ID_A, TS_A, BODY_A, SECRET_B)} {SIG_A}"
    for secret in (SECRET_A, SECRET_B):
        verified(BODY_A, webhook_headers(ID_A, BODY_A, [SECRET_B, SECRET_A]), secret)


def test_signature_header_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        signature_header(ID_A, TS_A, BODY_A, [])


def test_webhook_headers() -> None:
    assert webhook_headers(ID_A, BODY_A, [SECRET_A], now=TS_A) == {
        "webhook-id": ID_A,
        "webhook-timestamp": str(TS_A),
        "webhook-signature": SIG_A,
    }
    before = int(time.time())
    headers = webhook_headers(ID_A, BODY_A, [SECRET_A])
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())


# --- cross-check with the reference library ------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [BODY_A, BODY_B, b"{}", '{"name": "Zoë", "city": "Kraków"}'.encode()],
    ids=["A", "B", "empty-object", "non-ascii"],
)
def test_reference_library_verifies_our_headers(body: bytes) -> None:
    secret = generate_secret()
    headers = webhook_headers("msg_cross_check", body, [secret])
    Webhook(secret).verify(body, headers, json_parse=False)


def test_reference_library_verifies_both_secrets_during_rotation() -> None:
    new, old, stranger = generate_secret(), generate_secret(), generate_secret()
    headers = webhook_headers("msg_rotation", BODY_B, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        verified(BODY_B, headers, secret)
    with pytest.raises(ReferenceVerificationError):
        verified(BODY_B, headers, stranger)


@pytest.mark.parametrize("key_bytes", [1, 32, 63, 64, 65, 200])
def test_sign_is_rfc_2104_hmac_sha256_for_keys_of_any_length(key_bytes: int) -> None:
    """The precomputed key blocks give what the standard library's HMAC gives, for keys shorter
    than, as long as and longer than SHA-256's 64-byte block (a longer key is hashed first)."""
    key = bytes(range(256))[:key_bytes] if key_bytes <= 256 else b"k" * key_bytes
    secret = "whsec_" + base64.b64encode(key).decode()
    body = '{"caf\u00e9": 1}'.encode()
    expected = hmac.digest(key, b"msg_1.1700000000." + body, "sha256")
    assert sign("msg_1", 1700000000, body, secret) == "v1," + base64.b64encode(expected).decode()
