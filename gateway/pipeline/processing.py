"""Background processing of stored pushes: source plugin -> OCTO events -> store + fan-out.

Pushes are leased from the store, so a crash mid-processing (or kill -9) only means the lease runs out
and the push is processed again; nothing acknowledged is lost. A PMS API outage defers the push with
backoff; a push that can't be turned into events is marked ``failed`` with its error, replayable.
A self-contained push is translated here too, but in its ingest request (``Processor.translate``),
and stored processed in the transaction that stores it; should that fail, it comes here as any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

import aiohttp

from gateway.config import IngestConfig, ServerConfig, SourceConfig
from gateway.models import NewEvent, PushRecord, RoomMap, RoomMapUpdate, trusted
from gateway.octo import Availability, AvailabilityEvent, BookingEvent
from gateway.pipeline.versions import version_micros
from gateway.sources import AcceptedPush, Outcome, PushRejected, RetryLater, Source, StoredPush
from gateway.sources.translation import stored_availability
from gateway.store import new_id
from gateway.store.errors import StorageUnavailable
from gateway.store.interface import HandOver, RoomMapConflict, Store
from gateway.web.ingest import REJECTED_KIND, incoming_from_raw

log = logging.getLogger(__name__)


def push_retry_delay(attempts: int, config: IngestConfig) -> float:
    """Exponential backoff with full jitter on the upper half, capped."""
    # The exponent is capped: 2.0 ** 1024 overflows, and max_attempts may be set that high.
    delay: float = min(config.retry_base * 2.0 ** min(max(attempts - 1, 0), 64), config.retry_max)
    return delay * random.uniform(0.5, 1.0)


def availability_subject(source: str, product_id: str, option_id: str, day: str) -> str:
    return f"{source}:{product_id}|{option_id}|{day}"


def booking_event(event: BookingEvent) -> NewEvent:
    # Read from the JSON sent: a booking made from JSON the plugin vouches for (``from_wire``
    # with ``validate=False``) is never built as models on the way out.
    booking = event.booking_json()
    subject = event.booking_key  # already names the source
    # Built from the plugin's output, validated or valid by construction: no second validation.
    return trusted(
        NewEvent,
        {
            "event": "booking_update",
            "subject": subject,
            "product_id": booking["productId"],
            "option_id": booking["optionId"],
            "data": {"booking": booking},
            "state_key": subject,
            "revision": event.revision,
            "version": None if event.version is None else version_micros(event.version),
            "only_if_changed": False,
        },
    )


def availability_event(source: str, event: AvailabilityEvent, only_if_changed: bool) -> NewEvent:
    subject = availability_subject(source, *event.key)
    return trusted(
        NewEvent,
        {
            "event": "availability_update",
            "subject": subject,
            "product_id": event.product_id,
            "option_id": event.option_id,
            "data": {"availability": event.availability_json()},
            "state_key": subject,
            "revision": None,
            "version": None,
            "only_if_changed": only_if_changed,
        },
    )


def acknowledges(source: Source, outcome: Outcome) -> bool:
    """Whether ``source.acknowledge`` is called for ``outcome``: always, as the plugin API has it,
    unless the source says (``acknowledge_only_listed = True``) that it acknowledges only the ids
    an outcome lists, and this one lists none (Beds24, which acknowledges nothing: no task per push)."""
    return bool(outcome.acknowledge) or not getattr(source, "acknowledge_only_listed", False)


def new_events(source: str, outcome: Outcome) -> list[NewEvent]:
    events = [booking_event(b) for b in outcome.bookings]
    events += [
        availability_event(source, a, outcome.only_changed_availability)
        for a in outcome.availability
    ]
    return events


@dataclass
class Context:
    """What a source plugin may use while it processes one push."""

    source: str
    settings: SourceConfig
    http: aiohttp.ClientSession
    store: Store
    # Room maps read (with the generation read) and kept during this push, by PMS booking id.
    _read_maps: dict[str, tuple[RoomMap | None, int]] = field(default_factory=dict)
    _kept_maps: dict[str, RoomMap] = field(default_factory=dict)

    async def known_availability(
        self, keys: list[tuple[str, str, str]]
    ) -> Mapping[tuple[str, str, str], Availability]:
        found = await self.known_availability_json(keys)
        return {key: stored_availability(wire) for key, wire in found.items()}

    async def known_availability_json(
        self, keys: list[tuple[str, str, str]]
    ) -> Mapping[tuple[str, str, str], dict[str, Any]]:
        subjects = {availability_subject(self.source, *key): key for key in keys}
        found = await self.store.known_availability(list(subjects))
        return {subjects[s]: wire for s, wire in found.items()}

    async def room_map(self, booking: str) -> RoomMap | None:
        if booking in self._kept_maps:
            return self._kept_maps[booking]
        if booking not in self._read_maps:
            found = await self.store.get_room_map(self.source, booking)
            self._read_maps[booking] = (None, 0) if found is None else found
        return self._read_maps[booking][0]

    def keep_room_map(self, booking: str, rooms: RoomMap) -> None:
        if booking not in self._read_maps:
            raise RuntimeError(f"keep_room_map({booking!r}) before room_map() read it")
        self._kept_maps[booking] = rooms

    def room_map_updates(self) -> list[RoomMapUpdate]:
        """The maps to store with the push's events, each fenced by the generation read."""
        return [
            RoomMapUpdate(
                source=self.source,
                booking=booking,
                rooms=rooms,
                generation=self._read_maps[booking][1],
            )
            for booking, rooms in self._kept_maps.items()
        ]

    def today(self) -> date:
        return self.now().date()

    def now(self) -> datetime:
        return datetime.now(UTC)


SANDBOX = "sandbox"


def effective_settings(name: str, settings: SourceConfig, server: ServerConfig) -> SourceConfig:
    """``api_url = "sandbox"`` means this gateway's own sandbox PMS API, wherever it listens."""
    if settings.api_url != SANDBOX:
        return settings
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    host = f"[{host}]" if ":" in host else host
    return settings.model_copy(update={"api_url": f"http://{host}:{server.port}/sandbox/{name}"})


@dataclass
class Translated:
    """A self-contained push processed in its ingest request, before it is stored."""

    id: str  # the id the push is stored under, if it is new
    source: Source
    context: Context
    outcome: Outcome
    events: list[NewEvent]
    room_maps: list[RoomMapUpdate]
    # The delivery worker's room, lent for the fan-out in that transaction (given back by
    # ``Processor.stored``, whatever happened to the write).
    hand_over: HandOver | None = None


class Outbox(Protocol):
    """Who sends what processed pushes store: the delivery worker, woken to claim it, or lending
    its room so a push's fan-out leases fresh messages to it (``HandOver``)."""

    def wake(self) -> None: ...

    def lend(self) -> HandOver | None: ...

    def adopt(self, hand_over: HandOver) -> None: ...


class Processor:
    """Leases due pushes and processes a few at a time; woken at once when a push is stored."""

    def __init__(
        self,
        store: Store,
        sources: Mapping[str, Source],
        settings: Mapping[str, SourceConfig],
        http: aiohttp.ClientSession,
        config: IngestConfig,
        server: ServerConfig,
        outbox: Outbox,
    ) -> None:
        self.store = store
        self.sources = sources
        self.settings = settings
        self.http = http
        self.config = config
        self.server = server
        self.outbox = outbox
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._reserved = 0  # slots promised to ingest requests storing a push leased to us
        self._stopping = False
        # When to claim: a claim is a write transaction (and a read for the next due time), so
        # the processor claims only when unleased pushes may be waiting, not after every push it
        # was handed at ingest. ``_signalled``: something stored or freed pushes to claim (a push
        # stored unleased, a replay, another process); it holds until a claim runs. ``_more``:
        # the last claim filled its room, so more may be due. ``_wake_on_done``: running pushes
        # another may wait behind (same order key): one that was claimed, or that was running
        # when a signal came (the signal may be a push stored behind it).
        self._signalled = True
        self._more = False
        self._wake_on_done: set[asyncio.Task[None]] = set()
        self._acks: set[asyncio.Task[None]] = set()  # acknowledging pushes processed at ingest
        self._settings_cache: dict[str, tuple[SourceConfig, SourceConfig]] = {}

    @property
    def lease_seconds(self) -> float:
        return self.config.lease_seconds

    def wake(self) -> None:
        """Pushes may wait unleased (stored without a free slot or behind an unfinished push of
        their booking, replayed, stored by another process): claim them."""
        self._signalled = True
        self._wake.set()

    def reserve(self) -> bool:
        """Promise ingest a processing slot for the push it is about to store leased, so the push
        starts the moment it is stored, without a claim round trip to the writer."""
        if self._stopping or self._room() <= 0:
            return False
        self._reserved += 1
        return True

    def adopt(self, push: PushRecord) -> None:
        """Process a push stored leased under a reservation."""
        self._reserved -= 1
        self._start(push)

    def release(self) -> None:
        """Give back a reservation that was not used (the push was a repeat, or waits its turn:
        ingest then calls ``wake`` too)."""
        self._reserved -= 1
        self._slot_freed()

    async def translate(self, name: str, accepted: AcceptedPush) -> Translated | None:
        """Process a self-contained push now, in its ingest request, for the transaction that
        stores it; None when it is to be stored and processed afterwards, as any other push: the
        source failed in any way (its failure is then recorded there, retried or failed as
        always), or the gateway is stopping."""
        source = self.sources.get(name)
        settings = self.settings.get(name)
        if self._stopping or source is None or settings is None:
            return None
        context = Context(name, self._effective(name, settings), self.http, self.store)
        push_id = new_id("psh")
        try:
            stored = StoredPush(push_id, name, accepted.kind, accepted.payload, 1)
            outcome = await source.process(stored, context)
            events = new_events(name, outcome)
            room_maps = context.room_map_updates()
        except Exception as exc:
            log.debug("source %s could not process a push at ingest: %r", name, exc)
            return None
        # Lent last: nothing may fail between here and the write that gives the room back.
        return Translated(push_id, source, context, outcome, events, room_maps, self.outbox.lend())

    def stored(
        self, translated: Translated, write: asyncio.Future[tuple[PushRecord, bool, int]]
    ) -> None:
        """After the transaction that stored a push processed at ingest: its deliveries go out
        and the source acknowledges it, as after ``complete_push``. One that waits its turn
        behind an unfinished push of its booking is claimed when that one is done."""
        hand_over = translated.hand_over
        if hand_over is not None:
            self.outbox.adopt(hand_over)  # nothing leased when the write failed
        if write.cancelled() or write.exception() is not None:
            return  # nothing stored (a room map conflict goes the usual way)
        record, created, deliveries = write.result()
        if not created:
            return
        if record.state == "accepted":
            self.wake()
            return
        if deliveries > (0 if hand_over is None else len(hand_over.leased)):
            self.outbox.wake()  # some are stored pending: claim them
        if not acknowledges(translated.source, translated.outcome):
            return
        task = asyncio.create_task(
            self._acknowledge(translated.source, translated.outcome, translated.context, record)
        )
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _acknowledge(
        self, source: Source, outcome: Outcome, context: Context, push: PushRecord
    ) -> None:
        try:
            await source.acknowledge(outcome, context)
        except Exception as exc:
            # The events are stored; the PMS will resend an unacknowledged push, which is recognised.
            log.warning("source %s could not acknowledge push %s: %s", push.source, push.id, exc)

    def _effective(self, name: str, settings: SourceConfig) -> SourceConfig:
        """``effective_settings``, worked out once per source (a copy of the settings each push
        was 1 % of Beds24 ingest)."""
        cached = self._settings_cache.get(name)
        if cached is None or cached[0] is not settings:
            cached = (settings, effective_settings(name, settings, self.server))
            self._settings_cache[name] = cached
        return cached[1]

    def _room(self) -> int:
        return self.config.concurrency - len(self._running) - self._reserved

    def _start(self, push: PushRecord) -> asyncio.Task[None]:
        task = asyncio.create_task(self.process(push))
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                room = self._room()
                if room > 0:
                    await self._claim(room)
                await self._sleep()
            except StorageUnavailable:
                # Logged by the store (once per interval); the pushes wait, stored.
                await asyncio.sleep(self.config.poll_interval)
            except Exception:
                # A storage hiccup (locked, disk full) must not end processing for good.
                log.exception("push processor: claiming pushes failed; trying again shortly")
                await asyncio.sleep(self.config.poll_interval)

    async def _claim(self, room: int) -> None:
        signalled, self._signalled = self._signalled, False
        if signalled:
            # What signalled may be a push stored behind one running now: claim again when each
            # of those is done.
            self._wake_on_done.update(self._running)
        try:
            pushes = await self.store.claim_pushes(room, self.config.lease_seconds)
        except BaseException:
            self._signalled = self._signalled or signalled
            raise
        self._more = len(pushes) >= room
        for push in pushes:
            # A claimed push may have others waiting behind it (stored while it was deferred).
            self._wake_on_done.add(self._start(push))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        behind = task in self._wake_on_done
        self._wake_on_done.discard(task)
        self._slot_freed(behind)

    def _slot_freed(self, behind: bool = False) -> None:
        """A slot came free: claim only if unleased pushes may be waiting for one. A push handed
        over at ingest that finishes wakes nobody (that claim found nothing, once per push)."""
        if behind or self._signalled or self._more:
            self._wake.set()

    async def _sleep(self) -> None:
        timeout = self.config.poll_interval
        if self._room() > 0:
            due = await self.store.next_push_due()
            if due is not None:
                timeout = min(timeout, max(due - datetime.now(UTC).timestamp(), 0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def stop(self, grace: float) -> None:
        """Stop claiming; give pushes in progress ``grace`` seconds, then cancel them (each hands
        its push back, so the next start processes it at once)."""
        self._stopping = True
        self._wake.set()
        if self._running or self._acks:
            _, pending = await asyncio.wait(self._running | self._acks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def process(self, push: PushRecord) -> None:
        try:
            await self._process(push)
        except StorageUnavailable:
            pass  # logged by the store; the lease runs out and the push is processed again
        except Exception:
            # Storage failed while settling: the lease runs out and the push is processed again.
            log.exception(
                "processing push %s failed; it is retried when its lease expires", push.id
            )

    async def _process(self, push: PushRecord) -> None:
        assert push.lease_token is not None
        source = self.sources.get(push.source)
        settings = self.settings.get(push.source)
        if source is None or settings is None:
            await self.store.fail_push(
                push.id, push.lease_token, f"no source {push.source!r} loaded"
            )
            return
        settings = self._effective(push.source, settings)
        context = Context(push.source, settings, self.http, self.store)
        try:
            stored = self._stored(push, source)
            outcome = await source.process(stored, context)
        except asyncio.CancelledError:
            # The gateway is stopping: hand the push back now, so the next start takes it at once
            # instead of waiting for the lease to run out.
            await asyncio.shield(
                self.store.defer_push(
                    push.id, push.lease_token, "interrupted: the gateway stopped", 0
                )
            )
            raise
        except (RetryLater, aiohttp.ClientError, TimeoutError) as exc:
            await self._defer(push, f"{type(exc).__name__}: {exc}")
            return
        except PushRejected as exc:
            await self.store.fail_push(push.id, push.lease_token, str(exc))
            log.warning("push %s failed: %s", push.id, exc)
            return
        except Exception as exc:
            # A plugin bug: keep the push, visibly failed, to replay once the plugin is fixed.
            log.exception("source %s failed on push %s", push.source, push.id)
            await self.store.fail_push(push.id, push.lease_token, f"{type(exc).__name__}: {exc}")
            return
        try:
            created = await self._complete(push, outcome, context)
        except RoomMapConflict as exc:
            # Another push for the same booking stored its map first: start again from that one.
            await self._defer(push, str(exc), delay=0.0)
            return
        if created is None:
            log.warning("lost the lease on push %s; another worker has it", push.id)
            return
        if acknowledges(source, outcome):
            await self._acknowledge(source, outcome, context, push)

    async def _complete(self, push: PushRecord, outcome: Outcome, context: Context) -> int | None:
        """Store the push's events and messages; fresh messages the delivery worker has room for
        are leased to it in the same transaction and start at once, the rest wait for its claim."""
        assert push.lease_token is not None
        hand_over = self.outbox.lend()
        try:
            created = await self.store.complete_push(
                push.id,
                push.lease_token,
                new_events(push.source, outcome),
                outcome.note,
                room_maps=context.room_map_updates(),
                hand_over=hand_over,
            )
        finally:
            if hand_over is not None:
                self.outbox.adopt(hand_over)
        if created and created > (0 if hand_over is None else len(hand_over.leased)):
            self.outbox.wake()  # some are stored pending: claim them
        return created

    def _stored(self, push: PushRecord, source: Source) -> StoredPush:
        if push.kind == REJECTED_KIND:
            # A push rejected at ingest and replayed: parse it again (the plugin may be fixed).
            accepted = source.accept(incoming_from_raw(push.source, push.payload))
            return StoredPush(push.id, push.source, accepted.kind, accepted.payload, push.attempts)
        return StoredPush(push.id, push.source, push.kind, push.payload, push.attempts)

    async def _defer(self, push: PushRecord, error: str, delay: float | None = None) -> None:
        """Try the push again after ``delay`` seconds (default: the backoff for its attempts)."""
        assert push.lease_token is not None
        if push.attempts >= self.config.max_attempts:
            await self.store.fail_push(
                push.id, push.lease_token, f"gave up after {push.attempts} attempts: {error}"
            )
            log.error("push %s failed after %d attempts: %s", push.id, push.attempts, error)
            return
        if delay is None:
            delay = push_retry_delay(push.attempts, self.config)
        await self.store.defer_push(push.id, push.lease_token, error, delay)
        log.warning("push %s: %s; retrying in %.1f s", push.id, error, delay)
        self._wake.set()  # it is due at a new time: the loop reads when
