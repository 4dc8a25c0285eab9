"""What changed between two OCTO booking dicts, as Ventrata-style diff entries.

Each entry is ``{"op": "add"|"remove"|"replace", "path": <JSON Pointer>, "was", "value"}``.
Objects are compared key by key and lists index by index (a longer list adds its extra items at
the end, a shorter one removes them from the last one down), so a changed guest shows as
``/unitItems/1/status``.
``was`` and ``value`` are strings, as Ventrata's Diff schema types them: strings as they are,
anything else as compact JSON text (``5``, ``true``, ``null``, ``{"refund":"FULL",...}``); the
missing side of an add or remove is ``"null"``. ``utcUpdatedAt`` changes on every update and is
not reported.
"""

from __future__ import annotations

import json
from typing import Any

IGNORED_PATHS = frozenset({"/utcUpdatedAt"})


def keep_cancellation_time(
    previous: dict[str, Any] | None, current: dict[str, Any]
) -> dict[str, Any]:
    """``current``, with the ``utcCancelledAt`` already sent when the booking was cancelled
    before and still is: a PMS that gives no cancellation time (Beds24's ``cancelTime`` null)
    dates it by each version's time, which would move it, and fill a diff, on every later
    update."""
    if previous is None or not previous.get("status") == current.get("status") == "CANCELLED":
        return current
    was, now = previous.get("cancellation"), current.get("cancellation")
    if not (isinstance(was, dict) and isinstance(now, dict) and was.get("utcCancelledAt")):
        return current
    return {**current, "cancellation": {**now, "utcCancelledAt": was["utcCancelledAt"]}}


def booking_diff(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[dict[str, str]]:
    """The changes from ``previous`` to ``current``; [] for a booking's first update."""
    if previous is None:
        return []
    changes: list[dict[str, str]] = []
    _compare(previous, current, "", changes)
    return [change for change in changes if change["path"] not in IGNORED_PATHS]


def _compare(was: Any, value: Any, path: str, changes: list[dict[str, str]]) -> None:
    if isinstance(was, dict) and isinstance(value, dict):
        for key in [*was, *(key for key in value if key not in was)]:
            child = f"{path}/{_escape(str(key))}"
            if key not in value:
                changes.append(_entry("remove", child, was[key], None))
            elif key not in was:
                changes.append(_entry("add", child, None, value[key]))
            else:
                _compare(was[key], value[key], child, changes)
    elif isinstance(was, list) and isinstance(value, list):
        common = min(len(was), len(value))
        for index in range(common):
            _compare(was[index], value[index], f"{path}/{index}", changes)
        for index in range(common, len(value)):
            changes.append(_entry("add", f"{path}/{index}", None, value[index]))
        # Highest index first, so the entries still apply in order as a JSON Patch.
        for index in reversed(range(common, len(was))):
            changes.append(_entry("remove", f"{path}/{index}", was[index], None))
    elif was != value or type(was) is not type(value):
        changes.append(_entry("replace", path, was, value))


def _entry(op: str, path: str, was: Any, value: Any) -> dict[str, str]:
    return {"op": op, "path": path, "was": _text(was), "value": _text(value)}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _escape(key: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")
