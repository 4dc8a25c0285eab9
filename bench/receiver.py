"""Webhook receivers: one aiohttp process standing in for every subscriber.

``POST /hook/{name}`` is a subscriber's URL; ``POST /bare`` takes the bare client's posts (the
delivery baseline), so both are counted by the same code. Every arrival is keyed by
``webhook-id`` (a retry repeats it, so repeats are counted as duplicates, not as deliveries),
timed on arrival, and, when the booking's ``notes`` carry the sender's send time, turned into an
end-to-end latency. The receiver lives in its own process so that its work is not charged to
the gateway's event loop, and it answers 200 at once, as a healthy subscriber would.

``GET /stats`` reports counts, first/last arrival and latency percentiles; ``POST /reset``
starts a new phase. Run: ``python -m bench.receiver --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.bodies import sent_at
from bench.procs import PYTHON, ServerProcess, free_port

try:
    import orjson

    loads: Any = orjson.loads
except ImportError:  # orjson is optional: the stdlib parser gives the same answers
    loads = json.loads


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(math.ceil(fraction * len(sorted_values)) - 1, 0)
    return sorted_values[min(rank, len(sorted_values) - 1)]


class Tally:
    """What arrived since the last reset."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.per_target: Counter[str] = Counter()
        self.duplicates = 0
        self.unparsable = 0
        self.latencies_ms: list[float] = []
        self.arrivals: list[float] = []
        self.first: float | None = None
        self.last: float | None = None
        self.sample: bytes | None = None  # one body as it arrived, for the bare client to send

    def record(self, target: str, webhook_id: str, body: bytes) -> None:
        now = time.time()
        key = f"{target}|{webhook_id}"
        if key in self.seen:
            self.duplicates += 1
            return
        self.seen.add(key)
        if self.sample is None:
            self.sample = body
        self.per_target[target] += 1
        if self.first is None:
            self.first = now
        self.last = now
        self.arrivals.append(now)
        try:
            doc = loads(body)
        except ValueError:
            self.unparsable += 1
            return
        booking = doc.get("booking") if isinstance(doc, dict) else None
        sent = sent_at(booking.get("notes")) if isinstance(booking, dict) else None
        if sent is not None:
            self.latencies_ms.append((now - sent) * 1000)

    def rate_by_quarter(self) -> list[float]:
        """Arrivals per second in each quarter of the arrival span: a rate that climbs as a
        backlog drains shows work whose cost grows with the backlog."""
        if self.first is None or self.last is None or self.last <= self.first:
            return []
        width = (self.last - self.first) / 4
        counts = [0, 0, 0, 0]
        for moment in self.arrivals:
            counts[min(int((moment - self.first) / width), 3)] += 1
        return [n / width for n in counts]

    def stats(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_ms)
        span = (self.last - self.first) if self.first is not None and self.last else 0.0
        return {
            "received": len(self.seen),
            "duplicates": self.duplicates,
            "unparsable": self.unparsable,
            "per_target": dict(self.per_target),
            "first": self.first,
            "last": self.last,
            "span_s": span,
            "rate_by_quarter": self.rate_by_quarter(),
            "latency_ms": {
                "count": len(latencies),
                "p50": percentile(latencies, 0.50),
                "p95": percentile(latencies, 0.95),
                "p99": percentile(latencies, 0.99),
                "max": latencies[-1] if latencies else None,
            },
        }


def make_app() -> web.Application:
    state = {"tally": Tally()}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = request.headers.get("webhook-id") or f"no-id-{time.time_ns()}"
        state["tally"].record(request.match_info.get("name", "bare"), webhook_id, body)
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state["tally"].stats())

    async def sample(request: web.Request) -> web.Response:
        body = state["tally"].sample
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="application/json")

    async def reset(request: web.Request) -> web.Response:
        state["tally"] = Tally()
        return web.json_response({"ok": True})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=4 * 1_048_576)
    app.router.add_post("/hook/{name}", hook)
    app.router.add_post("/bare", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/sample", sample)
    app.router.add_post("/reset", reset)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(make_app(), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


class Receiver(ServerProcess):
    """The harness's handle on the receiver process."""

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        args = [PYTHON, "-m", "bench.receiver", "--port", str(port)]
        super().__init__("receiver", args, workdir / "receiver.log", port)

    async def start(self, ready_path: str = "/healthz", timeout: float = 30.0) -> None:
        await super().start(ready_path, timeout)

    def hook_url(self, name: str) -> str:
        return f"{self.url}/hook/{name}"

    async def reset(self, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{self.url}/reset") as answer:
            answer.raise_for_status()

    async def sample(self, session: aiohttp.ClientSession) -> bytes | None:
        """The first body that arrived since the last reset, as the subscriber got it."""
        async with session.get(f"{self.url}/sample") as answer:
            return await answer.read() if answer.status == 200 else None

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.url}/stats") as answer:
            answer.raise_for_status()
            result: dict[str, Any] = await answer.json()
            return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
