"""Delivery workers: claim -> render -> sign -> POST -> settle, with the retry policy.

The only module that opens outbound connections to subscribers. Work is leased from the store, so a
crash (or kill -9) mid-delivery only lets the lease expire and the message is sent again with the
same ``webhook-id``. An attempt never outlives ``delivery.timeout`` (plus a second), and the lease
is comfortably longer, so a live worker always settles its message before anyone else may take it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, NamedTuple

from yarl import URL

from gateway.config import DeliveryConfig, GatewayConfig
from gateway.delivery.deadlines import Deadlines
from gateway.delivery.http_client import (
    PostClient,
    SendError,
    Target,
    excerpt_text,
    is_reserved_header,
)
from gateway.delivery.netguard import check_url
from gateway.delivery.signing import signature_header, webhook_headers
from gateway.delivery.slots import DeliverySlots
from gateway.delivery.splice import Spliced
from gateway.delivery.templates import TemplateProblem, Templates, is_url_template, to_json
from gateway.hooks import Hooks
from gateway.metrics import Metrics
from gateway.models import (
    AttemptRecord,
    DeliveryRecord,
    DeliveryState,
    Subscription,
    mask_password,
    trusted,
)
from gateway.octo import Supplier, SupplierContact
from gateway.store import utcnow
from gateway.store.errors import StorageUnavailable
from gateway.store.interface import ClaimRoom, HandOver, Settlement, Store

log = logging.getLogger(__name__)

RESPONSE_EXCERPT = 2048
CLAIM_BATCH = 16  # at most this many messages finish between two claims while many are in flight
DUE_READ_EVERY = 0.1  # seconds between reads of the next due time while messages are in flight
Verdict = Literal["delivered", "retry", "dead", "gone"]
Outcome = Literal["delivered", "retry", "dead", "disabled"]


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt's outcome, as the ``delivery_attempted`` hook sees it."""

    delivery_id: str
    subscription_id: str
    event: str
    attempt: int
    outcome: str
    status: int | None
    latency_ms: float
    error: str | None
    url: str  # password masked


@dataclass(slots=True)
class Response:
    """What one attempt got back (built per message: a frozen dataclass cost four times as much)."""

    status: int | None
    excerpt: str | None
    retry_after: float | None
    error: str | None
    latency_ms: float


def classify(status: int | None, retry_on_error: bool) -> Verdict:
    """2xx ends a message; 410 disables the subscription; network errors, timeouts, 408, 429 and
    5xx are retried; other answers are retried only while the subscription asks for it."""
    if status is not None and 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "gone"
    if status is None or status in (408, 429) or status >= 500:
        return "retry"
    return "retry" if retry_on_error else "dead"


def retry_delay(
    failed_attempts: int,
    schedule: list[float],
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait after ``failed_attempts`` (1, 2, ...) failures, or None when the schedule
    is spent.

    Each delay gets +/-20 % jitter; a ``Retry-After`` is honoured within 1x-2x of the scheduled
    delay (never sooner than the schedule, never more than twice as late)."""
    if failed_attempts < 1:
        raise ValueError(f"failed_attempts must be 1 or more, not {failed_attempts}")
    if failed_attempts > len(schedule):
        return None
    base = schedule[failed_attempts - 1]
    if retry_after is not None:
        return min(max(retry_after, base), 2 * base)
    return base * (rng or random).uniform(0.8, 1.2)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header (delay-seconds or HTTP-date) as seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        # OverflowError: a year or zone of twenty digits; a 200 carrying one is still delivered.
        return None
    if moment.tzinfo is None:  # "-0000": UTC, with no zone information
        moment = moment.replace(tzinfo=UTC)
    return max(moment.timestamp() - now, 0.0)


def webhook_object(subscription: Subscription) -> dict[str, Any]:
    """The Webhook object inside a delivered body: the OCTO fields, password masked, no secret."""
    return {
        "id": subscription.id,
        "event": subscription.event,
        "url": mask_password(subscription.url),
        "retryOnError": subscription.retry_on_error,
        "useContactLanguage": subscription.use_contact_language,
        "headers": dict(subscription.headers),
        "capabilities": list(subscription.capabilities),
    }


def supplier_object(config: GatewayConfig) -> dict[str, Any]:
    """The OCTO Supplier sent with every event, from ``[supplier]``."""
    supplier = config.supplier
    listening = config.server.public_url or f"http://{config.server.host}:{config.server.port}"
    return Supplier(
        id=supplier.id,
        name=supplier.name,
        endpoint=supplier.endpoint or listening.rstrip("/") + "/octo",
        contact=SupplierContact(
            website=supplier.website,
            email=supplier.email,
            telephone=supplier.telephone,
            address=supplier.address,
        ),
    ).model_dump(mode="json", by_alias=True)


def body_context(
    event: str, data: dict[str, Any], subscription: Subscription, supplier: dict[str, Any]
) -> dict[str, Any]:
    return {"event": event, "webhook": webhook_object(subscription), "supplier": supplier, **data}


def split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without its credentials, and the ``Authorization: Basic`` value they make (UTF-8,
    RFC 7617), or None when the URL carries none."""
    parsed = URL(url)
    if parsed.user is None:
        return url, None
    user, password = parsed.user, parsed.password or ""
    if ":" in user:
        raise ValueError("a user name in the URL may not contain ':'")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return str(parsed.with_user(None)), f"Basic {token}"


def request_headers(
    subscription_headers: dict[str, str], extra: dict[str, str], authorization: str | None
) -> dict[str, str]:
    """A message's headers before its signature: the subscription's, a plugin's, and the URL's
    credentials as ``Authorization`` (replacing any other). A header the gateway sets itself
    (``webhook-*``, ``Content-Type``, ``Content-Length``, ...: ``is_reserved_header``, any case)
    is left out: a second one would be ambiguous, or reframe the request. The API refuses such
    names in a subscription; a plugin's are dropped here."""
    merged = {**subscription_headers, **extra}
    headers = {name: value for name, value in merged.items() if not is_reserved_header(name)}
    if authorization is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = authorization
    return headers


def make_client(config: DeliveryConfig) -> PostClient:
    """The one outbound client of deliveries: guarded against private addresses at connect time,
    no proxies, no cookies, a bounded connect (``Sender.post`` bounds the rest of an attempt).
    It keeps as many idle connections as there are delivery slots (a /test send takes one too)."""
    return PostClient(
        allow_private=config.allow_private_targets,
        connect_timeout=config.connect_timeout,
        limit=config.concurrency,
    )


class Sender:
    """Renders, signs and POSTs one message; knows nothing of queues."""

    def __init__(
        self,
        config: GatewayConfig,
        templates: Templates,
        hooks: Hooks,
        client: PostClient,
    ) -> None:
        self.config = config
        self.templates = templates
        self.hooks = hooks
        self.client = client
        self.deadlines = Deadlines()
        self.supplier = supplier_object(config)
        per_subscription_hooks = bool(hooks.pm.hook.render_payload.get_hookimpls())
        self.spliced = Spliced(templates, per_subscription_hooks)
        self._webhooks: dict[str, tuple[Subscription, str]] = {}
        self._requests: dict[str, tuple[Subscription, Target]] = {}

    def render(self, event: str, data: dict[str, Any], subscription: Subscription) -> bytes:
        context = body_context(event, data, subscription, self.supplier)
        context = self.hooks.render_payload(event, context, subscription)
        return self.templates.render_body(event, subscription.template, context)

    def render_message(self, record: DeliveryRecord, subscription: Subscription) -> bytes:
        """A message's body: the event rendered once per template and the subscription's webhook
        spliced in where the template allows it (``gateway.delivery.splice``), else in full."""
        event, data, name = record.event, record.data, subscription.template
        if not self.spliced.spliceable(event, name):
            return self.render(event, data, subscription)

        def render_once(webhook: Any) -> bytes:
            context = {"event": event, "webhook": webhook, "supplier": self.supplier, **data}
            return self.templates.render_body(event, name, context)

        return self.spliced.render(
            record.event_seq, name, self._webhook_json(subscription), render_once
        )

    def _webhook_json(self, subscription: Subscription) -> str:
        """The subscription's webhook object as JSON, built once per cached subscription."""
        cached = self._webhooks.get(subscription.id)
        if cached is not None and cached[0] is subscription:
            return cached[1]
        text = to_json(webhook_object(subscription))
        self._webhooks[subscription.id] = (subscription, text)
        return text

    def _prepared(self, subscription: Subscription) -> Target:
        """The target without credentials, with the headers every message to a subscription
        (with a plain URL and no plugin headers) starts from, built once per cached subscription:
        its own and the content type (each message adds the signature's)."""
        cached = self._requests.get(subscription.id)
        if cached is not None and cached[0] is subscription:
            return cached[1]
        plain, authorization = split_credentials(subscription.url)
        headers = request_headers(subscription.headers, {}, authorization)
        prepared = [*headers.items(), ("Content-Type", "application/json")]
        target = Target.of(URL(plain), prepared)
        self._requests[subscription.id] = (subscription, target)
        return target

    def target(self, event: str, data: dict[str, Any], subscription: Subscription) -> str:
        if not is_url_template(subscription.url):
            return subscription.url
        context = body_context(event, data, subscription, self.supplier)
        return self.templates.render_url(subscription.url, context)

    def request(
        self,
        msg_id: str,
        event: str,
        url: str,
        body: bytes,
        subscription: Subscription,
        now: int | None = None,
    ) -> tuple[str, dict[str, str]]:
        """The URL to POST to (credentials taken out) and the headers of an attempt at ``now``
        (Unix seconds), built as ``_post`` builds them: the console shows these, secrets masked."""
        target, authorization = split_credentials(url)
        extra = self.hooks.delivery_headers(event, subscription, body)
        headers = request_headers(subscription.headers, extra, authorization)
        at = utcnow() if now is None else datetime.fromtimestamp(now, UTC)
        headers.update(webhook_headers(msg_id, body, subscription.signing_secrets(at), now))
        headers["Content-Type"] = "application/json"
        return target, headers

    async def post(
        self, msg_id: str, event: str, url: str, body: bytes, subscription: Subscription
    ) -> Response:
        """One attempt: no answer within ``delivery.timeout`` is a timeout, and an answer's body
        is read until then at most (plus a second of slack for closing). Every failure is an
        answer with an ``error``, never an exception."""
        started = time.perf_counter()
        task = asyncio.current_task()
        assert task is not None, "Sender.post runs in a task"
        deadline = task.get_loop().time() + self.config.delivery.timeout
        cancelling = self.deadlines.watch(task, deadline)
        try:
            return await self._post(msg_id, event, url, body, subscription, started, task, deadline)
        except asyncio.CancelledError:
            if self.deadlines.expired(task, cancelling):
                return Response(None, None, None, "timed out", _ms(started))
            raise
        except TimeoutError:
            return Response(None, None, None, "timed out", _ms(started))
        except (SendError, ValueError, OSError) as exc:
            return Response(None, None, None, f"{type(exc).__name__}: {exc}", _ms(started))
        except Exception as exc:
            # A plugin's delivery_headers, say: it fails the attempt, never the worker.
            log.exception("delivery %s failed unexpectedly", msg_id)
            return Response(None, None, None, f"{type(exc).__name__}: {exc}", _ms(started))
        finally:
            self.deadlines.unwatch(task)

    async def _post(
        self,
        msg_id: str,
        event: str,
        url: str,
        body: bytes,
        subscription: Subscription,
        started: float,
        task: asyncio.Task[Any],
        deadline: float,
    ) -> Response:
        if url != subscription.url:  # a URL template: check what it rendered to
            await check_url(url, allow_private=self.config.delivery.allow_private_targets)
        # Without a rotated-out secret the time does not matter (a datetime per message did).
        secrets = (
            subscription.signing_secrets(utcnow())
            if subscription.previous_secret
            else [subscription.secret]
        )
        target: Target
        headers: list[tuple[str, str]]
        if url == subscription.url and not self.hooks.implemented("delivery_headers"):
            target = self._prepared(subscription)
            timestamp = int(time.time())
            headers = [
                ("webhook-id", msg_id),
                ("webhook-timestamp", str(timestamp)),
                ("webhook-signature", signature_header(msg_id, timestamp, body, secrets)),
            ]
        else:
            plain, authorization = split_credentials(url)
            extra = self.hooks.delivery_headers(event, subscription, body)
            named = request_headers(subscription.headers, extra, authorization)
            named.update(webhook_headers(msg_id, body, secrets))
            named["Content-Type"] = "application/json"
            target = Target.of(URL(plain), named.items())
            headers = []
        # Once the answer's head is in, what is left is reading its body (bounded by the
        # deadline, which then keeps the status) and closing, a second later at most.
        answer = await self.client.post(
            target,
            headers,
            body,
            limit=RESPONSE_EXCERPT,
            deadline=deadline,
            on_head=lambda: self.deadlines.extend(task, deadline + 1),
        )
        retry_after = parse_retry_after(answer.headers.get("retry-after"), time.time())
        excerpt = excerpt_text(answer, RESPONSE_EXCERPT)
        return Response(answer.status, excerpt, retry_after, None, _ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


class SubscriptionCache:
    """Subscriptions as the workers see them, read at most once a second each instead of once
    per delivery. This process forgets an entry the moment it changes one (API or disable); a
    change made by another process shows within ``ttl``."""

    def __init__(self, store: Store, ttl: float = 1.0, slots: DeliverySlots | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.slots = slots
        self._entries: dict[str, tuple[float, Subscription | None]] = {}
        # One read per subscription at a time: when an entry runs out, every message in flight to
        # that subscription asks for it at once, and each used to read it for itself.
        self._reading: dict[str, asyncio.Task[Subscription | None]] = {}

    async def get(self, id: str) -> Subscription | None:
        now = time.monotonic()
        entry = self._entries.get(id)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        reading = self._reading.get(id)
        if reading is None:
            reading = self._reading[id] = asyncio.create_task(self._read(id, now))
        # Shielded: one waiter cancelled (its delivery stopped) leaves the read to the others.
        return await asyncio.shield(reading)

    async def _read(self, id: str, started: float) -> Subscription | None:
        try:
            subscription = await self.store.get_subscription(None, id)
        finally:
            ours = self._reading.get(id) is asyncio.current_task()
            if ours:
                del self._reading[id]
        if ours:  # not forgotten meanwhile (a change made here may have come after this read)
            self._entries[id] = (started, subscription)
        if subscription is not None and self.slots is not None:
            self.slots.assign(subscription.id, subscription.tenant)
        return subscription

    def forget(self, id: str) -> None:
        self._entries.pop(id, None)
        self._reading.pop(id, None)


class _Settling(NamedTuple):
    """An outcome queued to be written, with what its logs and hooks need."""

    settlement: Settlement
    outcome: Outcome
    response: Response
    url: str


class Deliverer:
    """Claims due deliveries and sends them, within overall and per-subscription limits; woken at
    once when new deliveries are stored, polling only for due retries."""

    def __init__(
        self, store: Store, config: GatewayConfig, sender: Sender, metrics: Metrics
    ) -> None:
        self.store = store
        self.config = config
        self.delivery = config.delivery
        self.sender = sender
        self.metrics = metrics
        self._leased_at_fan_out = metrics.leased.labels("fan-out")
        self._leased_by_claim = metrics.leased.labels("claim")
        self._wake = asyncio.Event()
        # Messages in flight by seq (unique among them, as the slots' keys are).
        self._running: dict[int, tuple[asyncio.Task[None], DeliveryRecord]] = {}
        self.slots = DeliverySlots(
            self.delivery.concurrency,
            self.delivery.per_subscriber_concurrency,
            self.delivery.per_tenant_concurrency,
        )
        self.subscriptions = SubscriptionCache(store, slots=self.slots)
        # Subscriptions that asked us to wait (429 or 503 with Retry-After), until time.time():
        # none of their messages is claimed meanwhile, so a rate-limited subscriber gets what
        # was in flight, not its whole backlog once per Retry-After.
        self._held_back: dict[str, float] = {}
        self._stopping = False
        self._loop_started = False
        self._loop_exited = asyncio.Event()
        # Settlements wait here while one batch is being written, then go as the next batch.
        self._settlements: list[_Settling] = []
        self._settler: asyncio.Task[None] | None = None
        # An attempt lasts at most timeout + 1 s (Sender.post); the lease covers that twice over
        # plus time to render and settle, and a crashed worker's messages are re-sent soon after.
        self.lease_seconds = self.delivery.timeout * 2 + 5
        self._disable_after = self.delivery.disable_after_hours * 3600
        self._outcome_counters: dict[str, Any] = {}
        self._new_work = False
        # A claim and a fan-out lending the room (``lend``) each get all of it: never both at once.
        self._claiming = False
        self._lent = False
        self._releasing: set[asyncio.Task[None]] = set()
        self._finished = 0  # messages finished since the last claim
        self._due: float | None = None
        self._due_read_at = -DUE_READ_EVERY

    def wake(self) -> None:
        """New messages are stored: claim at once (and read the next due time afresh after it:
        what the claim left behind, waiting its turn or for room, is due now)."""
        self._new_work = True
        self._due_read_at = -DUE_READ_EVERY
        self._wake.set()

    def lend(self) -> HandOver | None:
        """The room for the next push's fan-out to lease its fresh messages in (``HandOver``), so
        they start the moment they are stored, without a claim round trip; None while a claim or
        another fan-out holds the room, or there is none. ``adopt`` must follow, whatever
        happened to the push."""
        if self._stopping or self._claiming or self._lent:
            return None
        room = self._without_held_back(self.slots.room())
        if room.total <= 0:
            return None
        self._lent = True
        return HandOver(room, self.lease_seconds)

    def adopt(self, hand_over: HandOver) -> None:
        """Send what a fan-out leased under ``lend`` (nothing when it failed); the room is ours
        to claim in again."""
        self._lent = False
        if self._new_work:  # a claim waited for the room (``_claim``)
            self._wake.set()
        if not hand_over.leased:
            return
        if self._stopping:  # hand them back, so the next start sends them at once
            task = asyncio.create_task(self._release(hand_over.leased))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            return
        self._leased_at_fan_out.inc(len(hand_over.leased))
        self._start(hand_over.leased)

    async def _release(self, records: list[DeliveryRecord]) -> None:
        with contextlib.suppress(StorageUnavailable):  # else their leases run out
            await self.store.release_deliveries(records)

    def _counted(self, outcome: str) -> Any:
        """The deliveries counter of one outcome (``labels()`` looks its child up each call)."""
        child = self._outcome_counters.get(outcome)
        if child is None:
            child = self._outcome_counters[outcome] = self.metrics.deliveries.labels(outcome)
        return child

    async def learn_tenants(self) -> None:
        """Tell the slots whose subscriptions there are, so per-tenant limits hold from the first
        claim on."""
        for key in self.config.api_keys:
            for subscription in await self.store.list_subscriptions(key.name):
                self.slots.assign(subscription.id, subscription.tenant)

    async def run(self) -> None:
        self._loop_started = True
        try:
            try:
                await self.learn_tenants()
            except Exception:
                log.exception("delivery worker: reading subscriptions failed; limits catch up")
            while not self._stopping:
                self._wake.clear()
                self._new_work = False
                self._finished = 0
                started = time.time()
                try:
                    if await self._claim():
                        continue  # a full batch: more may be due now
                    await self._sleep(started)
                except StorageUnavailable:
                    # Logged by the store (once per interval); messages wait, stored.
                    await self._pause(self.delivery.poll_interval)
                except Exception:
                    log.exception("delivery worker: claiming failed; trying again shortly")
                    await self._pause(self.delivery.poll_interval)
        finally:
            self._loop_exited.set()

    async def _claim(self) -> bool:
        """Claim what there is room for; True when the batch was full."""
        if self._lent:  # a fan-out has the room: claim once it hands it back (``adopt``)
            self._new_work = True
            return False
        room = self._without_held_back(self.slots.room())
        if room.total <= 0:
            return False
        self._claiming = True
        try:
            claimed = await self.store.claim_deliveries(
                room, self.lease_seconds, ordering_max_wait=self.delivery.ordering_max_wait
            )
        finally:
            self._claiming = False
        if self._stopping:  # stopped while claiming: hand them back untouched
            await self.store.release_deliveries(claimed)
            return False
        if claimed:
            self._leased_by_claim.inc(len(claimed))
        self._start(claimed)
        return len(claimed) == room.total

    def _without_held_back(self, room: ClaimRoom) -> ClaimRoom:
        """``room`` with no room for the subscriptions that asked us to wait."""
        now = time.time()
        for subscription_id, until in list(self._held_back.items()):
            if until <= now:
                del self._held_back[subscription_id]
        if not self._held_back:
            return room
        full = dict.fromkeys(self._held_back, room.per_subscription)
        return dataclasses.replace(room, in_flight={**room.in_flight, **full})

    def _start(self, leased: list[DeliveryRecord]) -> None:
        # Claims run one at a time and slots are only freed meanwhile, so these fit the room.
        # A task leaves ``_running`` itself (``deliver``): no done callback per message.
        for record in leased:
            self.slots.take(record.seq, record.subscription_id)
            self._running[record.seq] = (asyncio.create_task(self.deliver(record)), record)

    async def _sleep(self, claimed_at: float) -> None:
        """Wait for a wake-up, the next retry falling due, or the poll interval. Messages that
        were due when the last claim ran but were not taken wait for something else (an earlier
        message of their booking, or room at their subscription), which wakes the loop itself."""
        timeout = self.delivery.poll_interval
        due = await self._next_due()
        if due is not None and due > claimed_at:
            timeout = min(timeout, max(due - time.time(), 0.005))
        if self._held_back:  # messages due but held back go when their subscription may take them
            timeout = min(timeout, max(min(self._held_back.values()) - time.time(), 0.005))
        deadline = asyncio.get_running_loop().time() + timeout
        # Messages finishing one by one wake the loop; while others are in flight, claim once a
        # few have finished instead of once per message (a claim is a round trip to the store).
        while await self._pause_until(deadline):
            if self._new_work or self._stopping:
                return
            if self._finished >= self._claim_batch() and self._claim_may_find():
                return
            self._wake.clear()

    def _claim_may_find(self) -> bool:
        """Whether a claim may find messages due: not while the next due time read since the
        last wake-up is still ahead (only leases in flight, or retries later) or nothing is
        queued. Messages leased at fan-out finish with nothing behind them, and a claim after
        each few was a write transaction finding nothing."""
        if self._due_read_at < 0:  # a new due time, not read yet
            return True
        return self._due is not None and self._due <= time.time()

    def _claim_batch(self) -> int:
        """How many messages must finish before the next claim: 1 with few in flight, up to
        ``CLAIM_BATCH`` with many (a quarter of those in flight)."""
        return max(1, min(CLAIM_BATCH, len(self._running) // 4))

    async def _next_due(self) -> float | None:
        """When the next queued message falls due. While messages are in flight their endings
        wake the loop anyway, so the answer is read again at most every ``DUE_READ_EVERY``
        seconds (a retry being scheduled reads it afresh)."""
        now = time.monotonic()
        if not self._running or now - self._due_read_at >= DUE_READ_EVERY:
            self._due = await self.store.next_delivery_due()
            self._due_read_at = now
        return self._due

    async def _pause(self, timeout: float) -> None:
        await self._pause_until(asyncio.get_running_loop().time() + timeout)

    async def _pause_until(self, deadline: float) -> bool:
        """Wait for a wake-up until ``deadline`` (loop time); False when it passed first."""
        if self._wake.is_set():
            return True
        try:
            async with asyncio.timeout_at(deadline):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, grace: float) -> None:
        """Stop claiming, let in-flight requests finish within ``grace``, release the rest."""
        self._stopping = True
        self.slots.close()
        self._wake.set()
        if self._loop_started:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loop_exited.wait(), max(grace, 1.0))
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        if self._running:
            tasks = dict(self._running.values())
            _, pending = await asyncio.wait(set(tasks), timeout=grace)
            unfinished = [tasks[t] for t in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if unfinished:
                # Storage down: their leases run out instead, and the next start sends them.
                with contextlib.suppress(StorageUnavailable):
                    await self.store.release_deliveries(unfinished)
        if self._settler is not None:  # the outcomes of the requests that finished
            await asyncio.wait({self._settler}, timeout=max(grace, 1.0))

    async def deliver(self, record: DeliveryRecord) -> None:
        settling = False
        try:
            settling = await self._deliver(record)
        except StorageUnavailable:
            # Logged by the store. The outcome is not recorded: the lease runs out and the
            # message is sent again, with the same webhook-id.
            pass
        except Exception:
            log.exception("delivery task for %s crashed", record.id)
        finally:
            self._running.pop(record.seq, None)
            if not settling:  # else its slot is free already, and it counts once written
                self.slots.release(record.seq)
                self._finished_one()

    def _finished_one(self) -> None:
        """A message is finished (its outcome written, or given up on): the next claim may
        follow, and see it finished (a later message of its booking may go now).

        The claim loop is woken only when it would claim (``_sleep`` checks the same): with
        many messages in flight, waking it per finished message cost a task step, a timer and
        a future each time, for nothing in seven of eight."""
        self._finished += 1
        if self._finished >= self._claim_batch() and self._claim_may_find():
            self._wake.set()

    async def _deliver(self, record: DeliveryRecord) -> bool:
        """Send one message; True once its outcome is queued to be written (``_settle``). The
        slot is freed as soon as the request is over, even while the outcome is still being
        recorded (the row stays leased until then, so it can't be claimed twice); a freed slot
        alone does not wake the claim loop: the next claim follows finished messages."""
        subscription = await self.subscriptions.get(record.subscription_id)
        if subscription is None or not subscription.active:
            await self.store.skip_delivery(record, "subscription disabled or deleted")
            self._counted("skipped").inc()
            return False
        attempt_number = record.attempts + 1
        try:
            body = record.body or self.sender.render_message(record, subscription)
            url = self.sender.target(record.event, record.data, subscription)
        except Exception as exc:
            # A broken template or a plugin's render_payload: a failed attempt like any other,
            # retried on the schedule, so the message ends dead instead of stuck in a lease.
            if not isinstance(exc, TemplateProblem):
                log.exception("rendering delivery %s failed", record.id)
            response = Response(None, None, None, f"cannot render: {exc}", 0.0)
            self.slots.release(record.seq)
            self._settle(record, subscription, attempt_number, response, None, subscription.url)
            return True
        try:
            response = await self.sender.post(record.id, record.event, url, body, subscription)
        finally:
            self.slots.release(record.seq)
        self._settle(record, subscription, attempt_number, response, body, url)
        return True

    async def _write_settlements(self) -> None:
        """Settle in batches: every settlement queued while a batch is being written goes into
        the next one (one transaction, a few statements, whatever its size). The delivery tasks
        do not wait for it: what follows a written outcome (metrics, logs, hooks, the next claim)
        is done here, per message, each failure on its own."""
        try:
            while self._settlements:
                await asyncio.sleep(0)  # requests ending in this same turn join the batch
                batch, self._settlements = self._settlements, []
                try:
                    results = await self.store.settle_deliveries([s.settlement for s in batch])
                except StorageUnavailable:
                    # Logged by the store. Not recorded: the leases run out and the messages are
                    # sent again, with the same webhook-ids.
                    results = None
                except Exception:
                    log.exception("recording %d delivery outcomes failed", len(batch))
                    results = None
                for i, settling in enumerate(batch):
                    try:
                        if results is not None:
                            self._settled(settling, results[i])
                    except Exception:
                        log.exception("after settling delivery %s", settling.settlement.delivery.id)
                    finally:
                        self._finished_one()
        finally:
            self._settler = None

    def _settle(
        self,
        record: DeliveryRecord,
        subscription: Subscription,
        attempt_number: int,
        response: Response,
        body: bytes | None,
        url: str,
    ) -> None:
        outcome: Outcome
        verdict = classify(response.status, subscription.retry_on_error)
        state: DeliveryState
        next_at: float | None = None
        disable_reason: str | None = None
        if verdict == "delivered":
            state, outcome = "delivered", "delivered"
        elif verdict == "gone":
            state, outcome = "dead", "disabled"
            disable_reason = "subscriber answered 410 Gone"
        else:
            delay = (
                retry_delay(
                    attempt_number - record.replayed_after,
                    self.delivery.retry_schedule,
                    response.retry_after,
                )
                if verdict == "retry"
                else None
            )
            if delay is None:
                state, outcome = "dead", "dead"
            else:
                state, outcome, next_at = "pending", "retry", time.time() + delay
                if response.status in (429, 503) and response.retry_after is not None:
                    # The subscriber asked for a pause: none of its messages until then.
                    held = self._held_back.get(record.subscription_id, 0.0)
                    self._held_back[record.subscription_id] = max(held, next_at)
        attempt = trusted(  # our own values: no validation needed
            AttemptRecord,
            {
                "delivery_id": record.id,
                "subscription_id": record.subscription_id,
                "attempt": attempt_number,
                "attempted_at": time.time(),
                "outcome": outcome,
                "status": response.status,
                "latency_ms": response.latency_ms,
                "error": response.error,
                "response": response.excerpt,
            },
        )
        # Positional: a frozen dataclass's keyword arguments cost a third more, per message.
        settlement = Settlement(
            record,
            attempt,
            state,
            next_at,
            body,
            disable_reason,
            self._disable_after,
        )
        self._settlements.append(_Settling(settlement, outcome, response, url))
        if self._settler is None:
            self._settler = asyncio.create_task(self._write_settlements())

    def _settled(self, settling: _Settling, settled: bool) -> None:
        """What follows a message's written outcome."""
        settlement, outcome, response, url = settling
        record, state, attempt_number = (
            settlement.delivery,
            settlement.state,
            settlement.attempt.attempt,
        )
        if not settled:
            log.warning("lost the lease on delivery %s before settling it", record.id)
            return
        if state == "pending":
            self._due_read_at = -DUE_READ_EVERY  # a new due time: read it afresh
        if state == "dead":
            # A dead message may have disabled the subscription (410, or failing too long).
            self.subscriptions.forget(record.subscription_id)
        self._counted(outcome).inc()
        self.metrics.attempt_latency.observe(response.latency_ms / 1000)
        if outcome != "delivered":
            log.info(
                "delivery %s to %s: attempt %d %s (%s)",
                record.id,
                mask_password(url),
                attempt_number,
                outcome,
                response.status or response.error,
            )
        if not self.sender.hooks.implemented("delivery_attempted"):
            return
        self.sender.hooks.delivery_attempted(
            Attempt(
                delivery_id=record.id,
                subscription_id=record.subscription_id,
                event=record.event,
                attempt=attempt_number,
                outcome=outcome,
                status=response.status,
                latency_ms=response.latency_ms,
                error=response.error,
                url=mask_password(url),
            )
        )
