"""Console pages for admins: stored pushes by state (body and error), their replay, and a live view
of the delivery queue, throughput and end-to-end latency over the last hour.

Replays go through the same store calls and processor wake-up as /admin/pushes/{id}/replay. The
queue depth over time comes from ``QueueSampler`` (this process samples the store every few
seconds); throughput and latency are read from the store, so they span every process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.appkeys import store_key
from gateway.models import PushState
from gateway.store.interface import Store
from gateway.web.console.charts import Series, line_chart, stacked_bars
from gateway.web.console.render import admin_page, redirect, render
from gateway.web.console.session import Session
from gateway.web.errors import bad_request, not_found
from gateway.web.ingest import intake_key

log = logging.getLogger(__name__)

PUSH_STATES: tuple[PushState, ...] = ("accepted", "processed", "failed")
HOUR = 3600.0
SAMPLE_EVERY = 10.0


class QueueSampler:
    """The delivery queue's depth every ``every`` seconds over the last hour, in memory."""

    def __init__(self, store: Store, every: float = SAMPLE_EVERY) -> None:
        self.store = store
        self.every = every
        self.samples: deque[tuple[float, float]] = deque(maxlen=int(HOUR / every) + 2)

    async def sample(self) -> tuple[float, float]:
        stats = await self.store.queue_stats()
        point = (time.time(), stats["depth"])
        self.samples.append(point)
        return point

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                log.warning("sampling the delivery queue failed; trying again", exc_info=True)
            await asyncio.sleep(self.every)


sampler_key = web.AppKey("console_sampler", QueueSampler)


async def sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    sampler = QueueSampler(app[store_key])
    app[sampler_key] = sampler
    task = asyncio.create_task(sampler.run(), name="console-queue-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def pushes_page(request: web.Request, session: Session) -> web.StreamResponse:
    state = request.query.get("state") or "failed"
    if state not in PUSH_STATES:
        raise bad_request("state: must be accepted, processed or failed")
    store = request.app[store_key]
    pushes = await store.list_pushes(state, limit=100)
    counts = await store.push_counts()
    return render(
        request,
        session,
        "pushes.html",
        pushes=pushes,
        counts=counts,
        state=state,
        states=PUSH_STATES,
    )


async def push_page(request: web.Request, session: Session) -> web.StreamResponse:
    push = await request.app[store_key].get_push(request.match_info["id"])
    if push is None:
        raise not_found(f"push {request.match_info['id']}")
    return render(request, session, "push.html", push=push, raw_body=_raw_body(push.payload))


def _raw_body(payload: Any) -> str | None:
    """A push kept as failed holds its body base64-encoded (ingest.raw_payload): show it as text."""
    if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
        return None
    try:
        return base64.b64decode(payload["body"], validate=True).decode("utf-8", "replace")
    except ValueError:
        return None


async def replay_push(request: web.Request, session: Session) -> web.StreamResponse:
    push = await request.app[store_key].replay_push(request.match_info["id"])
    if push is None:
        raise not_found(f"push {request.match_info['id']}")
    request.app[intake_key].wake()
    return redirect(
        request, f"/console/pushes/{push.id}", session, ("ok", "Queued for processing again.")
    )


async def replay_failed(request: web.Request, session: Session) -> web.StreamResponse:
    replayed = await request.app[store_key].replay_failed_pushes()
    if replayed:
        request.app[intake_key].wake()
    text = f"Queued {len(replayed)} failed push{'es' if len(replayed) != 1 else ''} again."
    return redirect(request, "/console/pushes?state=accepted", session, ("ok", text))


async def live_page(request: web.Request, session: Session) -> web.StreamResponse:
    return render(request, session, "live.html", **await _live(request))


async def live_panel(request: web.Request, session: Session) -> web.StreamResponse:
    """The charts alone, refreshed in place by console.js."""
    return render(request, session, "_live_panel.html", fragment=True, **await _live(request))


async def _live(request: web.Request) -> dict[str, Any]:
    store = request.app[store_key]
    now = time.time()
    since = now - HOUR
    sampler = request.app[sampler_key]
    if not sampler.samples or now - sampler.samples[-1][0] > 2:
        await sampler.sample()
    depth_now = sampler.samples[-1][1]
    activity = await store.delivery_activity(since)
    minutes = activity.minutes
    # Whole minutes, the current one included, so its bar ends at the right edge.
    start, end = minutes[0].start, minutes[-1].start + 60
    labels = [(now - m * 60, f"-{m} min" if m else "now") for m in (60, 45, 30, 15, 0)]
    depth_chart = line_chart(
        "Delivery queue depth",
        [Series("waiting", "#2f5bea", [(t, d) for t, d in sampler.samples if t >= start])],
        x0=start,
        x1=end,
        unit="messages",
        x_labels=labels,
    )
    throughput_chart = stacked_bars(
        "Delivery attempts per minute",
        [
            Series("delivered", "#1f9d55", [(m.start, m.delivered) for m in minutes]),
            Series("failed", "#d64545", [(m.start, m.failed) for m in minutes]),
        ],
        x0=start,
        x1=end,
        step=60,
        unit="per min",
        x_labels=labels,
    )
    latency_chart = line_chart(
        "Push to delivery latency",
        [
            Series("p50", "#2f5bea", [(m.start + 30, m.latency_p50_ms) for m in minutes]),
            Series("p95", "#c27c0e", [(m.start + 30, m.latency_p95_ms) for m in minutes]),
        ],
        x0=start,
        x1=end,
        unit="ms",
        x_labels=labels,
    )
    last = next((m for m in reversed(minutes) if m.delivered or m.failed), None)
    return {
        "depth_now": int(depth_now),
        "delivered_hour": sum(m.delivered for m in minutes),
        "failed_hour": sum(m.failed for m in minutes),
        "p95_last": last.latency_p95_ms if last else None,
        "capped": activity.capped,
        "charts": [depth_chart, throughput_chart, latency_chart],
        "sampled_since": datetime.fromtimestamp(sampler.samples[0][0], UTC),
    }


def add_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(sampler_ctx)
    app.router.add_get("/console/pushes", admin_page(pushes_page))
    app.router.add_post("/console/pushes/replay-failed", admin_page(replay_failed))
    app.router.add_get("/console/pushes/{id}", admin_page(push_page))
    app.router.add_post("/console/pushes/{id}/replay", admin_page(replay_push))
    app.router.add_get("/console/live", admin_page(live_page))
    app.router.add_get("/console/live/panel", admin_page(live_panel))
