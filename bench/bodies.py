"""Push bodies built from the vendor samples in ``plugins/<vendor>/samples``, made unique per request.

A body is a template with placeholders, so the Python generators and the wrk Lua script
(``bench/wrk/unique_body.lua``) expand exactly the same text:

- ``@@N@@``: the request's number (the Beds24 booking id), unique within a run;
- ``@@TS@@``: an ISO timestamp derived from N (Beds24 ``modifiedTime``, Channex ``timestamp``);
- ``@@DAY@@``: a day derived from N (the Channex ARI row's ``date``);
- ``@@NOTE@@``: free text (Beds24 ``comments``, which becomes the OCTO booking's ``notes``): the
  open-loop sender puts its send time there, so a receiver can measure end-to-end latency.

Unique bookings matter: the gateway answers a repeat of the same booking version (id +
modifiedTime) as a duplicate and never processes it, which would flatter every figure.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "plugins"

# Timestamps and days count from these, so N maps to the same text in Lua and in Python.
TS_EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY_EPOCH = 1_798_761_600  # 2027-01-01: ARI days in the future, cycling over two years
DAY_CYCLE = 730

SOURCES = ("beds24", "channex")
TOKENS = {"beds24": "demo-beds24-token", "channex": "demo-channex-token"}
SENT_PREFIX = "bench-sent:"


def sample_path(name: str) -> Path:
    """A vendor sample, from its plugin's folder (``beds24-…`` lives in plugins/beds24/samples)."""
    return PLUGINS / name.split("-", 1)[0] / "samples" / name


def _fixture(name: str) -> Any:
    return json.loads((sample_path(name)).read_text(encoding="utf-8"))


def _template(doc: Any, marks: dict[str, str]) -> str:
    """Serialise ``doc`` and swap the marker strings for placeholders (numbers unquoted)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for marker, placeholder in marks.items():
        text = text.replace(json.dumps(marker), placeholder)
    return text


def beds24_template() -> str:
    """A Beds24 v2 notify push (an array of one booking item), as Beds24 sends it."""
    doc = copy.deepcopy(_fixture("beds24-v2-booking-1.json"))
    booking = doc[0]["booking"]
    booking["id"] = "__N__"
    booking["modifiedTime"] = "__TS__"
    booking["comments"] = "__NOTE__"
    for item in doc[0]["invoiceItems"]:
        item["bookingId"] = "__N__"
    doc[0]["timeStamp"] = "__TS__"
    return _template(doc, {"__N__": "@@N@@", "__TS__": '"@@TS@@"', "__NOTE__": '"@@NOTE@@"'})


def channex_template() -> str:
    """A Channex ARI push with the sample's row, its day and timestamp varying with N."""
    doc = copy.deepcopy(_fixture("channex-ari-1.json"))
    doc["payload"][0]["date"] = "__DAY__"
    doc["timestamp"] = "__TS__"
    return _template(doc, {"__DAY__": '"@@DAY@@"', "__TS__": '"@@TS@@"'})


BURST_ROOMS = 5  # room types in an availability burst; the rows spread over days for each


def ari_burst(rows: int, n: int) -> bytes:
    """One Channex ARI push of ``rows`` rows, each a different room type and day (so each row is
    one OCTO availability event): what a channel manager sends when a property's inventory is
    loaded or re-synced. ``n`` shifts the days, so two bursts touch different days."""
    doc = copy.deepcopy(_fixture("channex-ari-1.json"))
    sample = doc["payload"][0]
    first = datetime.fromtimestamp(DAY_EPOCH, UTC)
    doc["payload"] = [
        {
            **sample,
            "room_type_id": f"{sample['room_type_id'][:-2]}{i % BURST_ROOMS:02d}",
            "date": (first + timedelta(days=(n + i // BURST_ROOMS) % DAY_CYCLE)).strftime(
                "%Y-%m-%d"
            ),
            "availability": 1 + (n + i) % 9,
        }
        for i in range(rows)
    ]
    doc["timestamp"] = datetime.fromtimestamp(TS_EPOCH + n, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def template(source: str) -> str:
    if source == "beds24":
        return beds24_template()
    if source == "channex":
        return channex_template()
    raise ValueError(f"no push template for source {source!r}")


def expand(text: str, n: int, note: str = "bench") -> bytes:
    """The body for request number ``n`` (the Lua script computes the same text)."""
    ts = datetime.fromtimestamp(TS_EPOCH + n, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    day = (datetime.fromtimestamp(DAY_EPOCH, UTC) + timedelta(days=n % DAY_CYCLE)).strftime(
        "%Y-%m-%d"
    )
    return (
        text.replace("@@N@@", str(n))
        .replace("@@TS@@", ts)
        .replace("@@DAY@@", day)
        .replace("@@NOTE@@", note)
        .encode("utf-8")
    )


def write_wrk_template(source: str, path: Path) -> Path:
    """The template as wrk reads it: ``@@NOTE@@`` is fixed (wrk phases measure no latency)."""
    path.write_text(template(source).replace("@@NOTE@@", "bench"), encoding="utf-8")
    return path


def sent_note(at: float | None = None) -> str:
    """What the open-loop sender writes into a booking's comments: its scheduled send time."""
    return f"{SENT_PREFIX}{time.time() if at is None else at:.6f}"


def sent_at(notes: Any) -> float | None:
    """The send time a delivered booking's ``notes`` carries, if it is a bench booking."""
    if isinstance(notes, str) and notes.startswith(SENT_PREFIX):
        try:
            return float(notes[len(SENT_PREFIX) :])
        except ValueError:
            return None
    return None
