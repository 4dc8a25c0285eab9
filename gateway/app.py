"""The aiohttp application: routes, middlewares and the lifetime of shared resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway import ops, subscriptions
from gateway.appkeys import config_key, metrics_key, store_key
from gateway.config import GatewayConfig
from gateway.errors import octo_errors
from gateway.metrics import Metrics, metrics_middleware
from gateway.store import SQLiteStore, Store

CAPABILITIES = "octo/webhooks"


@web.middleware
async def octo_capabilities(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer names the capabilities in effect; octo/webhooks is always on here."""
    response: web.StreamResponse = await handler(request)
    response.headers["Octo-Capabilities"] = CAPABILITIES
    return response


def create_app(config: GatewayConfig, *, store: Store | None = None) -> web.Application:
    metrics = Metrics()
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[
            octo_capabilities,
            metrics_middleware(metrics),
            octo_errors,
            subscriptions.require_api_key,
        ],
    )
    app[config_key] = config
    app[metrics_key] = metrics
    app.cleanup_ctx.append(_store_ctx(store or SQLiteStore(config.storage.path)))

    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/metrics", ops.metrics)
    subscriptions.add_routes(app)
    return app


def _store_ctx(store: Store) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        app[store_key] = store
        yield
        await store.close()

    return ctx
