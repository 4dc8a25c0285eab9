"""The bundled vendor samples: sample events for /test and template checks, pushes for
``gateway push-sample``, and the answers of the sandbox PMS API."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from gateway.translate.channex import (
    availability_from_ari,
    bookings_from_revision,
    revision_attributes,
)
from gateway.translate.settings import TranslationSettings

# gateway push-sample SOURCE KIND: which bundled file is pushed, and how.
PUSHES: dict[tuple[str, str], dict[str, Any]] = {
    ("channex", "booking"): {"file": "channex-booking-1.json"},
    ("channex", "booking_new"): {"file": "channex-booking-2.json"},
    ("channex", "ari"): {"file": "channex-ari-1.json"},
    ("channex", "message"): {"file": "channex-message-1.json"},
    ("beds24", "v1"): {"query": {"bookid": "82279106", "status": "new"}},
    ("beds24", "v2"): {"file": "beds24-v2-booking-1.json"},
    ("beds24", "inventory"): {"file": "beds24-inventory-1.json"},
}


@cache
def load(name: str) -> Any:
    """A bundled sample file, parsed (cached: callers must not change what they get)."""
    text = resources.files("gateway.sample_data").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def sample_data(event: str) -> dict[str, Any]:
    """The data of a sample event of one kind, as a delivery renders it."""
    settings = TranslationSettings()
    if event == "booking_update":
        revision = revision_attributes(load("channex-booking-revision-1.json"))
        booking = bookings_from_revision(revision, settings)[0].booking
        return {"booking": booking.model_dump(mode="json", by_alias=True), "diff": []}
    rows = load("channex-ari-1.json")["payload"]
    slot = availability_from_ari(rows, settings, {})[0]
    return {
        "availability": slot.availability.model_dump(mode="json", by_alias=True),
        "productId": slot.product_id,
        "optionId": slot.option_id,
    }
