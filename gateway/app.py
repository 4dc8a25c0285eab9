"""The aiohttp application: routes, middlewares and the lifetime of shared resources.

Resources are owned by ``cleanup_ctx`` and torn down in reverse order: workers first (they stop
claiming and let in-flight work finish), then the HTTP sessions, then the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
import pluggy
from aiohttp import web
from pydantic import ValidationError

from gateway.appkeys import (
    config_key,
    deliverer_key,
    hooks_key,
    metrics_key,
    sender_key,
    store_key,
    templates_key,
    workers_key,
)
from gateway.config import ConfigError, GatewayConfig, describe_errors
from gateway.delivery.templates import DEFAULT_TEMPLATES, TemplateProblem, Templates
from gateway.delivery.worker import Deliverer, Sender, make_client
from gateway.hooks import Hooks
from gateway.maintenance import maintain_forever
from gateway.metrics import Metrics
from gateway.pipeline.processing import Processor
from gateway.plugins import make_plugin_manager
from gateway.redact import install_redaction
from gateway.samples import sample_data
from gateway.scopes import rescope_subscriptions
from gateway.sources import Source
from gateway.store.factory import make_store
from gateway.store.interface import Notifying, Store
from gateway.web import admin, apidocs, console, ingest, octo_reads, ops, webhook_actions, webhooks
from gateway.web.front import front_door

log = logging.getLogger(__name__)

CAPABILITIES = "octo/webhooks"
PMS_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


async def octo_capabilities(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer names the capabilities in effect; octo/webhooks is always on here. A
    response-prepare signal, not a middleware: one call per answer instead of one more coroutine
    layer around every handler (a middleware layer was 2-3 % of a push's main-thread CPU)."""
    response.headers["Octo-Capabilities"] = CAPABILITIES


def create_app(
    config: GatewayConfig,
    *,
    pm: pluggy.PluginManager | None = None,
    store: Store | None = None,
    workers: bool = True,
) -> web.Application:
    """Build the app. ``workers=False`` leaves out the background processor and delivery workers
    (for tests that drive them by hand)."""
    install_redaction()  # secrets out of every log line, aiohttp's own included
    hooks = Hooks(pm if pm is not None else make_plugin_manager(config.plugins.dir))
    metrics = Metrics()
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[front_door(metrics, config.server.body_timeout)],
    )
    app.on_response_prepare.append(octo_capabilities)
    app[config_key] = config
    app[metrics_key] = metrics
    app[hooks_key] = hooks
    app[templates_key] = Templates(config.templates.dir)
    hooks.prepare_jinja2_environment(app[templates_key].env)
    check_templates(app[templates_key], config)
    app[ingest.sources_key] = check_sources(config, hooks.sources())
    app[ingest.intake_key] = ingest.NoProcessor()

    app.cleanup_ctx.append(_store_ctx(store or make_store(config)))
    app.cleanup_ctx.append(_scopes_ctx)
    app.cleanup_ctx.append(_sessions_ctx)
    app.cleanup_ctx.append(_startup_ctx)
    if workers:
        app.cleanup_ctx.append(_workers_ctx)

    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/metrics", ops.metrics)
    webhooks.add_routes(app)
    webhook_actions.add_routes(app)
    octo_reads.add_routes(app)
    admin.add_routes(app)
    ingest.add_routes(app)
    for route in hooks.routes():
        app.router.add_route(route.method, route.path, route.handler)
    apidocs.add_routes(app)
    console.add_routes(app)
    return app


pms_session_key = web.AppKey("pms_session", aiohttp.ClientSession)


def check_sources(config: GatewayConfig, sources: dict[str, Source]) -> dict[str, Source]:
    """Every configured source needs a plugin, and its settings must suit that plugin."""
    file = config.source_file or "config"
    for name, settings in config.sources.items():
        source = sources.get(name)
        if source is None:
            known = ", ".join(sorted(sources)) or "none"
            raise ConfigError(
                f"{file}: sources.{name}: no plugin provides this source (loaded: {known})"
            )
        try:
            source.check_settings(settings)
        except ValidationError as exc:
            raise ConfigError(
                f"{file}: " + describe_errors(exc, prefix=("sources", name))
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{file}: sources.{name}: {exc}") from None
    return sources


def check_templates(templates: Templates, config: GatewayConfig) -> None:
    """The default body templates must render the sample events to valid JSON."""
    for event in DEFAULT_TEMPLATES:
        context = {"webhook": {}, "supplier": {}, **sample_data(event)}
        try:
            templates.render_body(event, None, context)
        except TemplateProblem as exc:
            raise ConfigError(f"{config.source_file or 'config'}: templates.dir: {exc}") from None


def _store_ctx(store: Store) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        app[store_key] = store
        yield
        await store.close()

    return ctx


async def _scopes_ctx(app: web.Application) -> AsyncIterator[None]:
    """Subscriptions take their key's products as configured now (gateway/scopes.py)."""
    try:
        await rescope_subscriptions(app[store_key], app[config_key].api_keys)
    except Exception:  # the store unavailable at start must not stop the gateway from serving
        log.warning(
            "applying the api keys' products to their subscriptions failed; tried again at"
            " the next start",
            exc_info=True,
        )
    yield


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[config_key]
    delivery_client = make_client(config.delivery)
    pms_session = aiohttp.ClientSession(timeout=PMS_TIMEOUT, trust_env=False)
    app[pms_session_key] = pms_session
    app[sender_key] = Sender(config, app[templates_key], app[hooks_key], delivery_client)
    yield
    await pms_session.close()
    await delivery_client.close()


async def _startup_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[hooks_key].startup(app)
    yield


async def _workers_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[config_key]
    store = app[store_key]
    sources: dict[str, Source] = app[ingest.sources_key]
    deliverer = Deliverer(store, config, app[sender_key], app[metrics_key])
    processor = Processor(
        store,
        sources,
        config.sources,
        app[pms_session_key],
        config.ingest,
        config.server,
        outbox=deliverer,
    )
    app[deliverer_key] = deliverer
    app[ingest.intake_key] = processor
    app[workers_key] = {
        name: asyncio.create_task(work, name=name)
        for name, work in (
            ("push-processor", processor.run()),
            ("delivery-worker", deliverer.run()),
            ("maintenance", maintain_forever(store, config)),
        )
    }
    if isinstance(store, Notifying):  # other processes' work wakes this one's workers
        store.on_pushes_waiting(processor.wake)
        store.on_deliveries_waiting(deliverer.wake)
    tasks = list(app[workers_key].values())
    yield
    # Workers first: stop claiming, let in-flight work finish within the grace period.
    await processor.stop(config.delivery.shutdown_grace)
    await deliverer.stop(config.delivery.shutdown_grace)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
