"""Sample OCTO events (static JSON) for ``/test`` deliveries and template checks.

They are plain OCTO objects, so the core never needs a vendor's translator to make one.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

EVENTS = ("booking_update", "availability_update")


@cache
def _load(event: str) -> dict[str, Any]:
    text = resources.files(__name__).joinpath(f"{event}.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def sample_data(event: str) -> dict[str, Any]:
    """The data of a sample event of one kind, as a delivery renders it (a fresh copy)."""
    if event not in EVENTS:
        raise KeyError(f"no sample for event {event!r}")
    return copy.deepcopy(_load(event))
