"""What an ingest source is: the interface source plugins implement, and what they are handed.

A push goes through two steps:

1. ``accept(push)`` runs inside the HTTP request, before the 200: it checks the push can be parsed,
   strips what must never be stored (card data), and says what to store. Raise ``PushRejected`` for a
   body that can't be parsed (400, kept as ``failed``).
2. ``process(stored, context)`` runs after the 200, in background work that survives restarts: it may
   read the PMS API (``context.http``) and returns the OCTO events. Raise ``RetryLater`` when the PMS
   API is down; the push is retried with backoff and never dropped. A push accepted as
   ``self_contained`` (it carries all its data) is processed before the 200 instead, and stored
   with its events in one transaction; should that fail, it is processed afterwards as in 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

import aiohttp

from gateway.config import SourceConfig
from gateway.models import MappedRoom as MappedRoom  # re-exported: what room maps hold
from gateway.models import RoomMap as RoomMap
from gateway.octo import Availability, AvailabilityEvent, BookingEvent


class PushRejected(Exception):
    """The push can't be parsed; the message names the problem and is sent back with a 400.

    ``keep_body=False`` keeps the rejected push without its body (a body that may carry card data).
    """

    def __init__(self, message: str, *, keep_body: bool = True) -> None:
        super().__init__(message)
        self.keep_body = keep_body


class RetryLater(Exception):
    """A temporary failure (PMS API down, 5xx, timeout): process the push again later."""


@dataclass(frozen=True)
class IncomingPush:
    """A push as it arrived; the ingest token is already removed from ``query`` and ``headers``."""

    source: str
    method: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class AcceptedPush:
    """What to store for a push: a short kind and a JSON-able, redacted payload."""

    kind: str
    payload: Any
    # Two pushes with the same dedupe key are one push (a sender's retry). None: the stored payload.
    dedupe_key: str | None = None
    # Pushes with the same order key (one booking) are processed one at a time, in arrival order.
    order_key: str | None = None
    # For pushes that only say "go and read": a push with the same coalesce key that is still
    # waiting to be processed stands for this one too (its read will see the same data).
    coalesce_key: str | None = None
    # True when ``process`` needs nothing but the payload (no PMS API call; it may still use the
    # context's store reads): the push is then processed inside the ingest request and stored
    # processed, events and all, in the one transaction that stores it. Should ``process`` fail
    # there in any way, the push is stored and processed afterwards, as any other.
    self_contained: bool = False


@dataclass(frozen=True)
class StoredPush:
    id: str
    source: str
    kind: str
    payload: Any
    attempts: int


@dataclass(frozen=True)
class SamplePush:
    """A documented vendor push a source offers to ``gateway push-sample``: a JSON body to POST, or
    (``body=None``) a GET carrying only ``query``."""

    body: Any = None
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    """What processing a push produced."""

    bookings: list[BookingEvent] = field(default_factory=list)
    availability: list[AvailabilityEvent] = field(default_factory=list)
    # True: drop availability events equal to the last known state (a full resync, not a change feed).
    only_changed_availability: bool = False
    note: str | None = None
    # Opaque ids handed back to ``acknowledge`` once the events are stored (Channex revision ids).
    acknowledge: list[str] = field(default_factory=list)


class SourceContext(Protocol):
    """What a source may use while processing."""

    @property
    def settings(self) -> SourceConfig: ...

    @property
    def http(self) -> aiohttp.ClientSession: ...

    async def known_availability(
        self, keys: list[tuple[str, str, str]]
    ) -> Mapping[tuple[str, str, str], Availability]:
        """The last availability sent for (productId, optionId, day), where known."""
        ...

    async def known_availability_json(
        self, keys: list[tuple[str, str, str]]
    ) -> Mapping[tuple[str, str, str], dict[str, Any]]:
        """``known_availability`` as the OCTO JSON each was sent as, without building models
        (read-only: the same objects may be handed out again)."""
        ...

    async def room_map(self, booking: str) -> RoomMap | None:
        """What was kept for one of this source's bookings (``booking`` is the PMS booking id)
        by the last push that kept a map for it, or earlier in this ``process`` call; None for a
        booking never seen. For PMSs whose bookings list several rooms (Channex ``rooms[]``): which
        room is which, so each keeps its uuid across revisions."""
        ...

    def keep_room_map(self, booking: str, rooms: RoomMap) -> None:
        """Keep ``rooms`` for the booking once this push is done. It is stored in the transaction
        that stores the push's events, so a crash keeps both or neither. Read the map with
        ``room_map`` first: should another push have changed it meanwhile, nothing of this push
        is stored and it is processed again, reading the new map."""
        ...

    def today(self) -> date: ...

    def now(self) -> datetime: ...


class Source(Protocol):
    """An ingest source, as a plugin hands it to ``register_sources`` (the hook's docstring in
    ``gateway.hookspecs`` is the full contract). It may also offer ``samples``: a mapping of kind
    to ``SamplePush`` for ``gateway push-sample``, and ``acknowledge_only_listed = True``:
    ``acknowledge`` is then called only for outcomes that list ids in ``acknowledge``."""

    name: str

    def check_settings(self, settings: SourceConfig) -> None:
        """Raise ``ValueError`` or a pydantic ``ValidationError`` naming the key when
        ``[sources.<name>]`` is unusable, including a key the source does not know (start-up and
        ``gateway check``)."""
        ...

    def accept(self, push: IncomingPush) -> AcceptedPush:
        """Before the 200: check the push parses, strip card data, say what to store; raise
        ``PushRejected`` for a 400."""
        ...

    async def process(self, push: StoredPush, context: SourceContext) -> Outcome:
        """After the 200 (and again after a crash or replay): the push's OCTO events. Raise
        ``RetryLater`` while the PMS API is down, ``PushRejected`` when it can never succeed."""
        ...

    async def acknowledge(self, outcome: Outcome, context: SourceContext) -> None:
        """Called once the push's events are durably stored (Channex acks revisions here). A
        failure is logged, not retried: the PMS resends, and the resend is recognised."""
        ...
