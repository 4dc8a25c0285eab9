"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.appkeys import config_key, metrics_key, store_key, workers_key
from gateway.store.errors import StorageUnavailable
from gateway.web.errors import error_response
from gateway.web.openapi import describe
from gateway.web.schemas import Health, NotReady, Readiness


@describe("Liveness: 200 while the process serves", tag="operations", ok=Health)
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves requests. Storage and workers are /readyz's business."""
    return web.json_response({"status": "ok"})


@describe(
    "Readiness: the database takes writes and the workers run",
    tag="operations",
    ok=Readiness,
    errors=[503],
    error_bodies={503: NotReady},
)
async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database takes a write now and the background workers are running.
    503 names every check that failed."""
    checks = {"storage": await _storage_check(request)}
    for name, task in request.app.get(workers_key, {}).items():
        checks[name] = _worker_check(task)
    failed = {name: state for name, state in checks.items() if state != "ok"}
    if failed:
        problems = "; ".join(f"{name}: {state}" for name, state in failed.items())
        return error_response(503, f"not ready: {problems}", checks=checks)
    return web.json_response({"status": "ready", "checks": checks})


async def _storage_check(request: web.Request) -> str:
    timeout = request.app[config_key].storage.write_timeout
    try:
        async with asyncio.timeout(timeout):
            await request.app[store_key].check_writable()
    except StorageUnavailable as exc:
        return f"not writable: {exc.reason}"
    except TimeoutError:
        return f"a test write did not finish within {timeout:g} s"
    return "ok"


def _worker_check(task: asyncio.Task[None]) -> str:
    if not task.done():
        return "ok"
    if task.cancelled():
        return "stopped"
    error = task.exception()
    return "stopped" if error is None else f"stopped: {type(error).__name__}: {error}"


@describe("Prometheus metrics", tag="operations", media="text/plain")
async def metrics(request: web.Request) -> web.Response:
    metrics_ = request.app[metrics_key]
    store = request.app[store_key]
    stats = await store.queue_stats()
    metrics_.queue_depth.set(stats["depth"])
    metrics_.oldest_pending.set(stats["oldest_age"])
    metrics_.log_bytes.set(await store.log_bytes() or 0)
    body = metrics_.render()
    return web.Response(
        body=body,
        headers={"Content-Type": CONTENT_TYPE_LATEST, "X-Gateway-Process": metrics_.process},
    )
