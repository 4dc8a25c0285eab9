"""The plugin contract: hook specifications only, no logic.

Every hook is documented in docs/plugin_hooks.md; tests/test_plugin_hooks.py keeps the two in step.
"""

from __future__ import annotations

from typing import Any

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("gateway")
hookimpl = HookimplMarker("gateway")


@hookspec
def register_sources(register: Any) -> None:
    """Add ingest sources: call ``register(source)`` once per source.

    A source is an object with a ``name`` (the ``{source}`` in ``/ingest/{source}``), an
    ``accept(push)`` method that checks and redacts a push before it is stored, and an async
    ``process(push, context)`` that turns a stored push into OCTO events (see ``gateway.sources``).
    """


@hookspec
def register_routes(register: Any) -> None:
    """Add HTTP routes: call ``register(method, path, handler)`` for each.

    Handlers are ordinary aiohttp handlers; they run behind the gateway's error and metrics
    middlewares. Paths under ``/octo`` and ``/admin`` require an api key. Describe a handler with
    ``gateway.plugin_api.describe`` so /openapi.json documents it.
    """


@hookspec
def prepare_jinja2_environment(env: Any) -> None:
    """Adjust the sandboxed Jinja2 environment used for URL and body templates (filters, globals)."""


@hookspec(firstresult=True)
def render_payload(event: str, payload: dict[str, Any], subscription: Any) -> dict[str, Any] | None:
    """Replace the context a delivery body is rendered from.

    ``payload`` is the default body for ``event`` (``booking_update`` or ``availability_update``);
    return a new dict to render instead, or None to leave it. The first plugin to return a dict wins.
    """


@hookspec
def delivery_headers(event: str, subscription: Any, body: bytes) -> dict[str, str] | None:
    """Extra HTTP headers for one delivery; return a dict or None. Signature headers win over these."""


@hookspec
def delivery_attempted(attempt: Any) -> None:
    """Observe the outcome of one delivery attempt (``gateway.delivery.worker.Attempt``): status, latency,
    error. Called after the attempt is recorded; must not block."""


@hookspec
def startup(app: Any) -> Any:
    """Called once the app's resources are open; may return an awaitable, which is awaited."""
