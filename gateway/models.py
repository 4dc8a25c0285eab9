"""The gateway's own records (subscriptions, pushes, deliveries) and the OCTO Webhook object.

OCTO Booking/Availability live in ``gateway.octo``; this module holds what the store keeps about the
gateway's own work and how it is shown over the API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

EventName = Literal["booking_update", "availability_update"]
EVENTS: tuple[EventName, ...] = ("booking_update", "availability_update")


class Subscription(BaseModel):
    """One reseller's webhook subscription, as stored."""

    model_config = ConfigDict(extra="forbid")

    id: str
    tenant: str
    event: EventName
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    retry_on_error: bool = True
    use_contact_language: bool = True
    capabilities: list[str] = Field(default_factory=list)
    template: str | None = None
    secret: str
    previous_secret: str | None = None
    previous_secret_until: datetime | None = None
    products: list[str] = Field(default_factory=lambda: ["*"])
    active: bool = True
    disabled_reason: str | None = None
    failing_since: float | None = None
    created_at: datetime
    updated_at: datetime

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret, plus the previous one while its rotation grace period lasts."""
        secrets = [self.secret]
        if self.previous_secret and self.previous_secret_until and now < self.previous_secret_until:
            secrets.append(self.previous_secret)
        return secrets

    def webhook(self, *, reveal_password: bool = False) -> dict[str, Any]:
        """The OCTO Webhook object; the URL password is masked unless ``reveal_password``."""
        return {
            "id": self.id,
            "event": self.event,
            "url": self.url if reveal_password else mask_password(self.url),
            "retryOnError": self.retry_on_error,
            "useContactLanguage": self.use_contact_language,
            "headers": dict(self.headers),
            "capabilities": list(self.capabilities),
            "secret": self.secret,
            "active": self.active,
            "template": self.template,
            "products": list(self.products),
            "disabledReason": self.disabled_reason,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        }


MASK = "***"


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of ``scheme://user:password@host/...`` sits in ``url``, found on the text
    as written (no parsing and re-encoding, so a URL template keeps its ``{{ ... }}``)."""
    start = url.find("://")
    if start < 0:
        return None
    start += 3
    end = len(url)
    for stop in "/?#":
        found = url.find(stop, start)
        if found >= 0:
            end = min(end, found)
    at = url.rfind("@", start, end)  # like urllib: the last "@" ends the user info
    colon = url.find(":", start, at) if at >= 0 else -1
    if colon < 0:
        return None
    return colon + 1, at


def mask_password(url: str) -> str:
    """``https://user:pass@host/`` -> ``https://user:***@host/``; the rest exactly as written."""
    span = _password_span(url)
    if span is None:
        return url
    return url[: span[0]] + MASK + url[span[1] :]


def restore_password(url: str, stored: str) -> str:
    """A URL sent back with its password masked (what GET showed) keeps the stored password, as
    long as it still goes to the same scheme, user and host: the masked password is never sent
    somewhere else by someone who never saw it (ValueError)."""
    span, old = _password_span(url), _password_span(stored)
    if span is None or old is None or url[span[0] : span[1]] != MASK:
        return url
    if url[: span[0]] != stored[: old[0]] or _authority_end(url, span[1]) != _authority_end(
        stored, old[1]
    ):
        raise ValueError(
            f"the password shows as {MASK}: give it again to send it to another scheme, user or host"
        )
    return url[: span[0]] + stored[old[0] : old[1]] + url[span[1] :]


def _authority_end(url: str, at: int) -> str:
    """What follows the password up to the path: ``@host:port``."""
    end = len(url)
    for stop in "/?#":
        found = url.find(stop, at)
        if found >= 0:
            end = min(end, found)
    return url[at:end]


def iso(moment: datetime) -> str:
    """UTC timestamp in the form OCTO uses: ``2024-05-01T10:00:00Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_from_epoch(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return iso(datetime.fromtimestamp(seconds, UTC))


PushState = Literal["accepted", "processed", "failed"]


class PushRecord(BaseModel):
    """A stored push and where its processing stands."""

    id: str
    source: str
    kind: str
    state: PushState
    payload: Any = None
    error: str | None = None
    note: str | None = None
    attempts: int = 0
    next_attempt_at: float
    received_at: float
    processed_at: float | None = None
    lease_token: str | None = None

    def admin_view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "state": self.state,
            "error": self.error,
            "note": self.note,
            "attempts": self.attempts,
            "receivedAt": iso_from_epoch(self.received_at),
            "processedAt": iso_from_epoch(self.processed_at),
            "nextAttemptAt": iso_from_epoch(self.next_attempt_at)
            if self.state == "accepted"
            else None,
            "payload": self.payload,
        }


class NewEvent(BaseModel):
    """An OCTO event produced by processing a push, before the store gives it history and fan-out."""

    event: EventName
    subject: str  # what ordering and coalescing group by: one booking, or product|option|day
    product_id: str
    option_id: str
    data: dict[str, Any]  # {"booking": {...}} or {"availability": {...}}
    state_key: str  # where the last known state of this subject is kept
    revision: str | None = None  # a booking revision already seen is not sent again
    # A booking version (microseconds since the epoch) older than the last one sent is stale.
    version: int | None = None
    only_if_changed: bool = False


DeliveryState = Literal["pending", "leased", "delivered", "dead", "skipped", "superseded"]


class DeliveryRecord(BaseModel):
    """One message for one subscription; ``id`` is its ``webhook-id``."""

    seq: int
    id: str
    event_seq: int
    subscription_id: str
    event: EventName
    order_key: str
    state: DeliveryState
    attempts: int
    replayed_after: int = 0  # attempts made before the latest replay (its schedule starts after)
    next_attempt_at: float
    lease_token: str | None = None
    body: bytes | None = None
    last_status: int | None = None
    last_error: str | None = None
    created_at: float
    delivered_at: float | None = None
    data: dict[str, Any] = Field(default_factory=dict)  # the event's data, joined in on claim


class AttemptRecord(BaseModel):
    delivery_id: str
    subscription_id: str
    attempt: int
    attempted_at: float
    outcome: Literal["delivered", "retry", "dead", "disabled", "skipped"]
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response: str | None = None

    def view(self, state: str | None = None) -> dict[str, Any]:
        return {
            "messageId": self.delivery_id,
            "attempt": self.attempt,
            "attemptedAt": iso_from_epoch(self.attempted_at),
            "outcome": self.outcome,
            "status": self.status,
            "latencyMs": self.latency_ms,
            "error": self.error,
            "response": self.response,
            "state": state,
        }


class MappedRoom(BaseModel):
    """One room of a PMS booking that lists several (Channex ``rooms[]``), as last seen."""

    model_config = ConfigDict(extra="forbid")

    # The room's number within its booking: its booking_key and OCTO uuid derive from it. A slot
    # is never reused for another room of the booking.
    slot: int = Field(ge=0)
    # Listed by the booking's latest revision; False for a room dropped from it (already sent as
    # cancelled), kept only so its slot is never given out again.
    listed: bool = True
    # What the source needs to recognise the room in the next revision and to send it again
    # (cancelled, should the next revision drop it): JSON, the source's own shape.
    details: dict[str, Any] = Field(default_factory=dict)


class RoomMap(BaseModel):
    """What the gateway keeps about one PMS booking between its revisions: which room is which
    (so each keeps its uuid), and the times that must not move with every revision."""

    model_config = ConfigDict(extra="forbid")

    rooms: list[MappedRoom] = Field(default_factory=list)
    # The booking's OCTO utcCreatedAt (its first revision's time), the same for its whole life.
    created_at: str | None = None
    # The revision these rooms are from (an instant); an older revision arriving late is stale.
    version: datetime | None = None

    def next_slot(self) -> int:
        """The slot for a room the booking has never had."""
        return max((room.slot for room in self.rooms), default=-1) + 1


class RoomMapUpdate(BaseModel):
    """A room map to store with a push's events, if nobody changed it since it was read."""

    source: str
    booking: str
    rooms: RoomMap
    # The generation read (0: nothing was stored); the store bumps it on every write.
    generation: int = Field(ge=0)


class BookingFilter(BaseModel):
    """Which latest bookings a reconciliation read wants (GET /octo/bookings)."""

    model_config = ConfigDict(extra="forbid")

    products: list[str] | None = None  # the caller's productIds; None: every product
    supplier_reference: str | None = None
    reseller_reference: str | None = None
    updated_since: float | None = None  # Unix seconds: recorded by the gateway at or after it
    after: tuple[float, str] | None = None  # the page after this (updated_at, key) position
    limit: int = Field(50, ge=1)


class LatestBooking(BaseModel):
    """The last OCTO booking the gateway sent for one PMS booking (room), and its position in
    newest-first order (``updated_at``: when the gateway recorded it; ``key``: the tie-break)."""

    booking: dict[str, Any]
    updated_at: float
    key: str


M = TypeVar("M", bound=BaseModel)
_FIELDS: dict[type[BaseModel], frozenset[str]] = {}


def trusted(cls: type[M], values: dict[str, Any]) -> M:
    """``cls`` built from our own values with every field given, without validation: what
    ``model_construct`` does, at a quarter of its cost (it looks up aliases and defaults field by
    field: 20 µs for a delivery row here, once per message claimed). Missing or unknown fields
    fall back to ``model_construct``. ``values`` becomes the model's ``__dict__``."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = frozenset(cls.model_fields)
    if values.keys() != fields or cls.__pydantic_post_init__ or cls.__private_attributes__:
        return cls.model_construct(**values)
    model = cls.__new__(cls)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", set(fields))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


_set = object.__setattr__
