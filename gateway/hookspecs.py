"""The plugin contract: hook specifications and the types they take, no logic.

Every hook is documented in docs/plugin_hooks.md; tests/test_plugin_hooks.py keeps the two in step.
A plugin imports what it needs (``hookimpl`` and these types) from ``gateway.plugin_api``.

Hooks may be implemented as wrappers (``@hookimpl(wrapper=True)``) like any pluggy hook: the gateway
calls every hook through pluggy, never an implementation directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web
from pluggy import HookimplMarker, HookspecMarker

from gateway.models import Subscription
from gateway.sources import Source

if TYPE_CHECKING:
    # Only for annotations: the delivery worker imports the hook caller, which imports this.
    from gateway.delivery.worker import Attempt

hookspec = HookspecMarker("gateway")
hookimpl = HookimplMarker("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""An aiohttp request handler."""

RegisterSource = Callable[[Source], None]
"""What ``register_sources`` is handed: ``register(source)``."""

RegisterRoute = Callable[[str, str, Handler], None]
"""What ``register_routes`` is handed: ``register(method, path, handler)``."""


@hookspec
def register_sources(register: RegisterSource) -> None:
    """Add ingest sources: call ``register(source)`` once per source, during this call.

    ``source`` implements ``gateway.plugin_api.Source``:

    - ``name``: the ``{source}`` of ``POST /ingest/{source}`` and the key of its
      ``[sources.<name>]`` table; letters, digits and ``_``, unique among all plugins.
    - ``check_settings(settings: SourceConfig) -> None``: called at start-up and by
      ``gateway check`` with the source's table. Raise ``ValueError`` or a pydantic
      ``ValidationError`` naming the key when it is unusable, and refuse keys it does not know:
      validating against a subclass of ``SourceSettings`` (``extra="forbid"``) does both.
    - ``accept(push: IncomingPush) -> AcceptedPush``: runs inside the request, before the 200. It
      checks the push can be parsed, strips what must never be stored (card numbers, CVV, card
      tokens: ``without_card_data``) and returns the ``kind``, a JSON-able ``payload`` and
      optionally a ``dedupe_key`` (same key = one push), an ``order_key`` (pushes with the same key
      are processed one at a time, in arrival order) and a ``coalesce_key`` (a waiting push with the
      same key stands for this one). Raise ``PushRejected("what is wrong")`` for a 400; the push is
      kept as ``failed`` (without its body when ``keep_body=False``).
    - ``async process(push: StoredPush, context: SourceContext) -> Outcome``: runs after the 200,
      again after a crash or a replay, so it must give the same events for the same push. It may
      read the PMS API with ``context.http`` (raise ``RetryLater`` while it is down: the push is
      retried with backoff, never dropped) and returns the OCTO ``bookings`` and ``availability``
      events. A ``BookingEvent`` carries a ``booking_key`` (one PMS booking, or one room of it:
      updates with the same key are diffed against each other and reach a subscriber in order),
      and may carry ``revision`` (the PMS's id of this version: the same revision as the last one
      sent for the booking is not sent again) and ``version`` (the time of this version, an aware
      datetime: a version older than the last one sent for the booking is dropped). Raise
      ``PushRejected`` when the push can never be processed (state ``failed``, replayable).
    - ``async acknowledge(outcome: Outcome, context: SourceContext) -> None``: called once the
      outcome's events are durably stored, with the ids the outcome listed in ``acknowledge``
      (Channex acknowledges booking revisions here). A failure is logged and not retried: the
      events are stored, and the PMS's resend of what it still thinks unacknowledged is
      recognised by its ``revision`` and not sent twice.
    - optionally ``samples: Mapping[str, SamplePush]``: documented vendor pushes for
      ``gateway push-sample <source> <kind>``.
    - optionally ``acknowledge_only_listed = True``: ``acknowledge`` is then called only for an
      outcome that lists ids in ``acknowledge``; without it, for every outcome stored.
    """


@hookspec
def register_routes(register: RegisterRoute) -> None:
    """Add HTTP routes: call ``register(method, path, handler)`` for each, during this call.

    Handlers are ordinary aiohttp handlers; they run behind the gateway's error and metrics
    middlewares. Paths under ``/octo`` and ``/admin`` require an api key.
    """


@hookspec
def prepare_jinja2_environment(env: jinja2.Environment) -> None:
    """Adjust the sandboxed Jinja2 environment used for URL and body templates (filters, globals)."""


@hookspec(firstresult=True)
def render_payload(
    event: str, payload: dict[str, Any], subscription: Subscription
) -> dict[str, Any] | None:
    """Replace the context a delivery body is rendered from.

    ``payload`` is the default body for ``event`` (``booking_update`` or ``availability_update``),
    a JSON object; return a new dict to render instead, or None to leave it. The first plugin to
    return a dict wins.
    """


@hookspec
def delivery_headers(event: str, subscription: Subscription, body: bytes) -> dict[str, str] | None:
    """Extra HTTP headers for one delivery; return a dict or None. Signature headers win over these."""


@hookspec
def delivery_attempted(attempt: Attempt) -> None:
    """Observe the outcome of one delivery attempt: status, latency, error. Called after the attempt
    is recorded; must not block."""


@hookspec
def startup(app: web.Application) -> Awaitable[None] | None:
    """Called once the app's resources are open; may return an awaitable, which is awaited."""
