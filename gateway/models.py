"""The gateway's own records (subscriptions, pushes, deliveries) and the OCTO Webhook object.

OCTO Booking/Availability live in ``gateway.octo``; this module holds what the store keeps about the
gateway's own work and how it is shown over the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

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
    created_at: datetime
    updated_at: datetime

    def may_receive(self, product_id: str) -> bool:
        return "*" in self.products or product_id in self.products

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


def mask_password(url: str) -> str:
    """``https://user:pass@host/`` -> ``https://user:***@host/``; anything else unchanged."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return url
    if parsed.password is None:
        return url
    return str(parsed.with_password("***"))


def iso(moment: datetime) -> str:
    """UTC timestamp in the form OCTO uses: ``2024-05-01T10:00:00Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
