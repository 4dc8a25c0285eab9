"""Operational endpoints: liveness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.appkeys import metrics_key, store_key
from gateway.web.openapi import describe
from gateway.web.schemas import Health


@describe("Liveness: 200 while the process serves", tag="operations", ok=Health)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@describe("Prometheus metrics", tag="operations", media="text/plain")
async def metrics(request: web.Request) -> web.Response:
    metrics_ = request.app[metrics_key]
    stats = await request.app[store_key].queue_stats()
    metrics_.queue_depth.set(stats["depth"])
    metrics_.oldest_pending.set(stats["oldest_age"])
    body = metrics_.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
