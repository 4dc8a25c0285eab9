"""What the JSON API answers, as pydantic models: /openapi.json is generated from them.

Handlers build their answers from the store's records (``Subscription.webhook()``,
``AttemptRecord.view()``, ``PushRecord.admin_view()``); these models describe those shapes. They
forbid unknown keys, so a field added to an answer but not here fails the schemathesis run
(tests/test_openapi_fuzz.py) instead of going undocumented.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from gateway.models import DeliveryState, EventName, PushState
from gateway.web.errors import CODES

ErrorCode = Literal[
    "BAD_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "REQUEST_TIMEOUT",
    "CONFLICT",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "TOO_MANY_REQUESTS",
    "INTERNAL_SERVER_ERROR",
    "SERVICE_UNAVAILABLE",
    "ERROR",
]
assert set(CODES.values()) <= set(get_args(ErrorCode))  # keep the two lists in step


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OctoErrorBody(BaseModel):
    """Every error: an OCTO error code and a message naming what is wrong."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    error: ErrorCode
    errorMessage: str = Field(examples=["url: field required"])


class IngestRejected(OctoErrorBody):
    """A push that could not be parsed: kept as ``failed`` so it can be replayed after a fix."""

    id: str = Field(description="the kept push's id (GET /admin/pushes/{id})")
    state: PushState


class Webhook(Answer):
    """The OCTO Webhook object, plus the gateway's own fields."""

    id: str
    event: EventName
    url: str = Field(
        description="password shown as *** except in the answer to the POST that set it"
    )
    retryOnError: bool
    useContactLanguage: bool
    headers: dict[str, str]
    capabilities: list[str]
    secret: str = Field(pattern=r"^whsec_", description="Standard Webhooks signing secret")
    active: bool = Field(description="false once the gateway disabled a failing subscription")
    template: str | None
    products: list[str]
    disabledReason: str | None
    createdAt: datetime
    updatedAt: datetime


class RotatedWebhook(Webhook):
    previousSecretExpiresAt: datetime = Field(
        description="until then deliveries carry a signature with the previous secret too"
    )


class TestOutcome(Answer):
    """The outcome of one test delivery (nothing is queued or retried)."""

    messageId: str
    delivered: bool
    status: int | None = Field(description="the subscriber's HTTP status; null when none came")
    latencyMs: float
    response: str | None = Field(description="the first 2 KB of the subscriber's answer")
    error: str | None


class Attempt(Answer):
    """One delivery attempt, with its message's state now."""

    messageId: str = Field(description="the message's webhook-id, the same on every retry")
    attempt: int
    attemptedAt: datetime | None
    outcome: Literal["delivered", "retry", "dead", "disabled", "skipped"]
    status: int | None
    latencyMs: float | None
    error: str | None
    response: str | None
    state: DeliveryState | None


class Replayed(Answer):
    replayed: int = Field(description="messages queued again")


class Push(Answer):
    """A stored push and where its processing stands."""

    id: str
    source: str
    kind: str
    state: PushState
    error: str | None
    note: str | None
    attempts: int
    receivedAt: datetime | None
    processedAt: datetime | None
    nextAttemptAt: datetime | None
    payload: Any = Field(description="the push as stored (card data removed)")


class Ingested(Answer):
    """A push durably stored (or recognised as a repeat of one)."""

    id: str
    state: PushState
    kind: str
    duplicate: bool = Field(description="true when this push repeats one already stored")


class Health(Answer):
    status: Literal["ok"]


class Readiness(Answer):
    status: Literal["ready"]
    checks: dict[str, str] = Field(
        description='"ok" for each: storage (a test write), push-processor, delivery-worker, maintenance'
    )


class NotReady(OctoErrorBody):
    """503: errorMessage lists what failed."""

    checks: dict[str, str] = Field(
        examples=[{"storage": "not writable: database or disk is full", "push-processor": "ok"}]
    )
