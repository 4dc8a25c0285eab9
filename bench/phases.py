"""The measurements, one function per phase. Each starts the processes it needs and stops them.

Every gateway phase starts a fresh gateway on a fresh database (except the history phase, whose
database is the point), so no phase inherits another's backlog, caches or queue.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import bodies, report
from bench.gateway_proc import Gateway, source_tokens
from bench.history import prefill
from bench.load import run_bare, run_closed, run_open
from bench.logsize import LogSize
from bench.procs import PYTHON, ServerProcess, free_port
from bench.profile import Profiler
from bench.receiver import Receiver
from gateway.config import DeliveryConfig

# Replay everything: the delivery phase's database holds only that phase's messages.
EPOCH = "2000-01-01T00:00:00Z"


@dataclass(frozen=True)
class Plan:
    """How much of each phase to run. ``quick`` is the smoke-test size (seconds, not minutes)."""

    generator: str
    quick: bool = False
    connections: int = 32
    throughput_seconds: int = 10
    rate: float = 200.0
    e2e_seconds: float = 10.0
    e2e_subscribers: tuple[int, ...] = (1, 10, 100)
    # The gateway can't deliver 200 pushes/s x 100 subscribers as they come; the send time of a
    # phase is cut so it offers at most this many deliveries (it still runs at the full rate).
    e2e_max_deliveries: int = 30_000
    peak_pushes: int = 2_000
    peak_subscribers: int = 10
    # The availability burst: one Channex ARI push of this many rows (one event each) to this
    # many availability subscribers.
    burst_rows: int = 1_800
    burst_subscribers: int = 5
    history_deliveries: int = 1_000_000
    drain_timeout: float = 300.0
    # The durable floor and ingest run this many times, alternately; the push targets take the
    # median round (``report.median_rounds``): one round's ratio swings by a tenth on a shared VM.
    rounds: int = 3

    @classmethod
    def quick_plan(cls, generator: str) -> Plan:
        return cls(
            generator=generator,
            quick=True,
            connections=8,
            throughput_seconds=2,
            e2e_seconds=1.5,
            e2e_subscribers=(1, 2),
            peak_pushes=100,
            peak_subscribers=2,
            burst_rows=100,
            burst_subscribers=2,
            history_deliveries=1_000,
            drain_timeout=30.0,
            rounds=1,
        )


@dataclass
class Context:
    plan: Plan
    workdir: Path
    session: aiohttp.ClientSession
    receiver: Receiver
    templates: dict[str, Path] = field(default_factory=dict)
    profile_dir: Path | None = None  # py-spy each gateway into this folder
    profilers: dict[str, Profiler] = field(default_factory=dict)
    rss_mb: dict[str, float | None] = field(default_factory=dict)
    log_sizes: dict[str, LogSize] = field(default_factory=dict)
    log_mb: dict[str, float] = field(default_factory=dict)  # the largest -wal file, per gateway
    loop_cpu: dict[str, float | None] = field(default_factory=dict)  # at the last idle_cpu
    _next_base: int = 0

    def base(self) -> int:
        """A fresh range of request numbers, so no phase repeats another's bookings."""
        self._next_base += 10_000_000
        return self._next_base

    def template_file(self, source: str, *, with_note: bool = False) -> Path:
        """The body template for ``source`` on disk (wrk reads files)."""
        key = f"{source}-note" if with_note else source
        if key not in self.templates:
            path = self.workdir / f"{key}.template.json"
            if with_note:
                path.write_text(bodies.template(source), encoding="utf-8")
            else:
                bodies.write_wrk_template(source, path)
            self.templates[key] = path
        return self.templates[key]

    async def gateway(self, name: str, db_path: Path | None = None) -> Gateway:
        gateway = Gateway(self.workdir, name, db_path)
        await gateway.start()
        self.log_sizes[name] = watch = LogSize(gateway.db_path)
        watch.start()
        if self.profile_dir is not None:
            profiler = Profiler(gateway.pid, self.profile_dir / f"{name}.txt")
            await profiler.start()
            self.profilers[name] = profiler
        return gateway

    async def idle_cpu(self, gateway: Gateway) -> float:
        """The gateway's CPU seconds once it has nothing left to do (no push waiting to be
        processed, no delivery waiting to be sent): the work of everything it accepted is in it."""
        deadline = time.monotonic() + self.plan.drain_timeout
        while (await gateway.backlog()) != (0, 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cpu = gateway.cpu_seconds()
        assert cpu is not None
        self.loop_cpu[gateway.name] = gateway.main_thread_cpu_seconds()
        return cpu

    def loop_share(self, gateway: Gateway, before: float | None, units: int) -> float | None:
        """CPU µs per unit of the gateway's event-loop thread since ``before`` (a ``loop_cpu``
        reading); the rest of the gateway's figure is its store threads (writer, readers,
        checkpoints)."""
        return _per_unit(before, self.loop_cpu.get(gateway.name), units)

    async def stop(self, gateway: Gateway) -> dict[str, Any]:
        profiler = self.profilers.pop(gateway.name, None)
        if profiler is not None:
            await profiler.stop()
        watch = self.log_sizes.pop(gateway.name, None)
        if watch is not None:
            self.log_mb[gateway.name] = await watch.stop() / 1e6
        await gateway.stop()
        self.rss_mb[gateway.name] = gateway.final_rss_mb
        return {"peak_rss_mb": gateway.final_rss_mb, "cpu_s": gateway.final_cpu_s}


async def floor(ctx: Context) -> dict[str, Any]:
    """The bare aiohttp handler loaded exactly like the gateway's ingest."""
    return await _bare_server(ctx, "floor", [])


async def durable_floor(ctx: Context) -> dict[str, Any]:
    """The bare handler storing each push as one group-committed SQLite row before answering:
    what durability alone costs, so the ingest ratio can be read against it too."""
    db_path = ctx.workdir / "durable-floor.db"
    try:
        return await _bare_server(ctx, "durable-floor", ["--durable", str(db_path)])
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)


async def _bare_server(ctx: Context, name: str, options: list[str]) -> dict[str, Any]:
    port = free_port()
    server = ServerProcess(
        name,
        [PYTHON, "-m", "bench.bare_server", "--port", str(port), *options],
        ctx.workdir / f"{name}.log",
        port,
    )
    await server.start("/healthz")
    tokens = source_tokens()
    try:
        results = {}
        for source in bodies.SOURCES:
            cpu = server.cpu_seconds()
            result = await run_closed(
                generator=ctx.plan.generator,
                url=f"{server.url}/ingest/{source}",
                template_file=ctx.template_file(source),
                token=tokens[source],
                base=ctx.base(),
                duration=ctx.plan.throughput_seconds,
                connections=ctx.plan.connections,
            )
            result["cpu_us_per_push"] = _per_unit(cpu, server.cpu_seconds(), result["ok"])
            results[source] = result
    finally:
        await server.stop()
    return results


async def _ingest_once(ctx: Context, gateway: Gateway, source: str) -> dict[str, Any]:
    base = ctx.base()
    # One push first: a cold start (imports, the start-up prune) is not ingest throughput, but
    # how long it takes is worth knowing.
    started = time.perf_counter()
    await gateway.push(ctx.session, source, bodies.expand(bodies.template(source), base))
    first_push_ms = (time.perf_counter() - started) * 1000
    cpu = await ctx.idle_cpu(gateway)
    loop_cpu = ctx.loop_cpu.get(gateway.name)
    before = await gateway.states()
    result = await run_closed(
        generator=ctx.plan.generator,
        url=f"{gateway.url}/ingest/{source}",
        template_file=ctx.template_file(source),
        token=gateway.tokens[source],
        base=base,
        duration=ctx.plan.throughput_seconds,
        connections=ctx.plan.connections,
    )
    after = await gateway.states()
    # Everything accepted is processed before the clock stops: translation and storage included.
    result["cpu_us_per_push"] = _per_unit(cpu, await ctx.idle_cpu(gateway), result["ok"])
    result["loop_cpu_us_per_push"] = ctx.loop_share(gateway, loop_cpu, result["ok"])
    processed = after["pushes"].get("processed", 0) - before["pushes"].get("processed", 0)
    result["first_push_ms"] = first_push_ms
    result["processed_per_s"] = processed / result["duration_s"] if result["duration_s"] else 0.0
    result["unprocessed_at_end"] = after["pushes"].get("accepted", 0)
    result["failed_pushes"] = after["pushes"].get("failed", 0)
    return result


async def ingest(ctx: Context, round: int = 1) -> dict[str, Any]:
    """Ingest throughput per source: unique pushes, no subscribers, shipped durability."""
    results = {}
    for source in bodies.SOURCES:
        name = f"ingest-{source}" if round == 1 else f"ingest-{source}-{round}"
        gateway = await ctx.gateway(name)
        try:
            result = await _ingest_once(ctx, gateway, source)
        finally:
            stopped = await ctx.stop(gateway)
        results[source] = {**result, **stopped}
    return results


async def ingest_rounds(ctx: Context) -> dict[str, Any]:
    """The durable floor and ingest, one after the other, ``plan.rounds`` times: each ratio is
    measured side by side, and the median round is the run's (``report.median_rounds``). The
    run's ``durable_floor``, ``ingest`` and ``rounds`` results."""
    rounds = []
    for n in range(1, ctx.plan.rounds + 1):
        durable = await durable_floor(ctx)
        rounds.append({"durable_floor": durable, "ingest": await ingest(ctx, round=n)})
    median = report.median_rounds(rounds)
    return {
        "durable_floor": median["durable_floor"],
        "ingest": median["ingest"],
        "rounds": {"each": rounds, "ratios": median["ratios"]},
    }


async def _subscribe(ctx: Context, gateway: Gateway, count: int, prefix: str) -> list[str]:
    ids = []
    for i in range(count):
        url = ctx.receiver.hook_url(f"{prefix}{i}")
        ids.append(await gateway.subscribe(ctx.session, url, "booking_update"))
    return ids


async def _drain(ctx: Context, gateway: Gateway, expected: int) -> dict[str, Any]:
    """Wait until every expected delivery arrived, or the gateway has nothing left to send (what
    is missing then is lost), or the drain timeout (what is missing then may still be waiting)."""
    deadline = time.monotonic() + ctx.plan.drain_timeout
    idle_since: float | None = None
    started = time.monotonic()
    while True:
        stats = await ctx.receiver.stats(ctx.session)
        if stats["received"] >= expected:
            break
        pushes, deliveries = await gateway.backlog()
        if pushes == 0 and deliveries == 0:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 2.0:
                break
        else:
            idle_since = None
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    stats = await ctx.receiver.stats(ctx.session)
    pushes, deliveries = await gateway.backlog()
    stats["drain_s"] = time.monotonic() - started
    stats["waiting_pushes"] = pushes
    stats["waiting_deliveries"] = deliveries
    return stats


async def _warm_up(ctx: Context, gateway: Gateway, subscribers: int) -> None:
    """One booking through every subscription (connections opened, caches filled), then a
    clean slate at the receiver."""
    await ctx.receiver.reset(ctx.session)
    await gateway.push(ctx.session, "beds24", bodies.expand(bodies.template("beds24"), ctx.base()))
    await _drain(ctx, gateway, subscribers)
    await ctx.receiver.reset(ctx.session)


async def e2e(ctx: Context) -> list[dict[str, Any]]:
    """End-to-end latency at a fixed push rate for each subscriber count, with losses."""
    results = []
    for subscribers in ctx.plan.e2e_subscribers:
        plan = ctx.plan
        seconds = min(plan.e2e_seconds, plan.e2e_max_deliveries / (plan.rate * subscribers))
        gateway = await ctx.gateway(f"e2e-{subscribers}")
        try:
            await _subscribe(ctx, gateway, subscribers, "e2e-")
            await _warm_up(ctx, gateway, subscribers)
            cpu = await ctx.idle_cpu(gateway)
            sender = await run_open(
                url=f"{gateway.url}/ingest/beds24",
                template_file=ctx.template_file("beds24", with_note=True),
                token=gateway.tokens["beds24"],
                base=ctx.base(),
                rate=plan.rate,
                duration=seconds,
            )
            expected = sender["ok"] * subscribers
            stats = await _drain(ctx, gateway, expected)
            cpu_us = _per_unit(cpu, await ctx.idle_cpu(gateway), stats["received"])
            states = await gateway.states()
            leased = await gateway.leased(ctx.session)
        finally:
            stopped = await ctx.stop(gateway)
        waiting = stats["waiting_deliveries"] + stats["waiting_pushes"] * subscribers
        timed_out = stats["received"] < expected and waiting > 0
        latency = stats["latency_ms"]
        results.append(
            {
                "subscribers": subscribers,
                "rate": plan.rate,
                "send_seconds": seconds,
                "pushes_sent": sender["sent"],
                "pushes_ok": sender["ok"],
                "push_errors": sender["sent"] - sender["ok"],
                "sender_max_lag_ms": sender["max_lag_ms"],
                "push_answer_ms": sender["answer_ms"],
                "expected": expected,
                "received": stats["received"],
                "duplicates": stats["duplicates"],
                "losses": max(expected - stats["received"] - waiting, 0),
                "timed_out": timed_out,
                "waiting_at_end": waiting,
                "p50_ms": latency["p50"],
                "p95_ms": latency["p95"],
                "p99_ms": latency["p99"],
                "max_ms": latency["max"],
                "deliveries_per_s": stats["received"] / stats["span_s"] if stats["span_s"] else 0.0,
                "drain_s": stats["drain_s"],
                "cpu_us_per_delivery": cpu_us,
                "delivery_states": states["deliveries"],
                # Claimed messages waited in the queue: a large share means the gateway fell
                # behind (each costs a claim's work on top), as in docs/performance-log.md stop 16.
                "leased": leased,
                **stopped,
            }
        )
    return results


async def delivery(ctx: Context) -> dict[str, Any]:
    """Peak delivery throughput: a backlog released at once, against a bare aiohttp client.

    The backlog is built through the public API: subscriptions are switched off, bookings are
    pushed (their deliveries are stored as skipped), then each subscription is switched on and
    replayed, which makes every message due at once. Only delivery work is left to do, so the
    receiver's arrival rate is the delivery pipeline's peak."""
    plan = ctx.plan
    gateway = await ctx.gateway("delivery")
    try:
        sub_ids = await _subscribe(ctx, gateway, plan.peak_subscribers, "peak-")
        for sub_id in sub_ids:
            await gateway.set_active(ctx.session, sub_id, False)
        base, template = ctx.base(), bodies.template("beds24")
        gate = asyncio.Semaphore(16)

        async def push(n: int) -> None:
            async with gate:
                await gateway.push(ctx.session, "beds24", bodies.expand(template, n, "peak"))

        await asyncio.gather(*(push(base + i) for i in range(plan.peak_pushes)))
        while (await gateway.backlog())[0]:
            await asyncio.sleep(0.2)
        await ctx.receiver.reset(ctx.session)
        cpu = await ctx.idle_cpu(gateway)
        replayed = 0
        for sub_id in sub_ids:
            await gateway.set_active(ctx.session, sub_id, True)
            replayed += await gateway.replay(ctx.session, sub_id, EPOCH)
        stats = await _drain(ctx, gateway, replayed)
        cpu_us = _per_unit(cpu, await ctx.idle_cpu(gateway), stats["received"])
        body = await ctx.receiver.sample(ctx.session)
    finally:
        stopped = await ctx.stop(gateway)
    gateway_result = {
        "cpu_us_per_delivery": cpu_us,
        "messages": replayed,
        "received": stats["received"],
        "span_s": stats["span_s"],
        "per_s": stats["received"] / stats["span_s"] if stats["span_s"] else 0.0,
        "rate_by_quarter": stats["rate_by_quarter"],
        "losses": max(replayed - stats["received"] - stats["waiting_deliveries"], 0),
        **stopped,
    }
    if body is None:
        raise RuntimeError("the delivery phase delivered nothing; see the gateway log")
    body_file = ctx.workdir / "delivered-body.json"
    body_file.write_bytes(body)
    await ctx.receiver.reset(ctx.session)
    client = await run_bare(
        url=f"{ctx.receiver.url}/bare", body_file=body_file, count=replayed, concurrency=64
    )
    bare_stats = await ctx.receiver.stats(ctx.session)
    await ctx.receiver.reset(ctx.session)
    bare = {
        "messages": replayed,
        "received": bare_stats["received"],
        "span_s": bare_stats["span_s"],
        "per_s": bare_stats["received"] / bare_stats["span_s"] if bare_stats["span_s"] else 0.0,
        "rate_by_quarter": bare_stats["rate_by_quarter"],
        "client_errors": client["errors"],
        "client_cpu_s": client["cpu_s"],
        "cpu_us_per_delivery": _per_unit(0.0, client["sending_cpu_s"], bare_stats["received"]),
    }
    return {"gateway": gateway_result, "bare_client": bare, "body_bytes": len(body)}


async def burst(ctx: Context) -> dict[str, Any]:
    """An availability burst: one Channex ARI push of ``burst_rows`` rows to
    ``burst_subscribers`` availability subscriptions (thousands of deliveries from one request),
    against a bare aiohttp client POSTing as many bodies like the delivered ones. The gateway's
    CPU is counted from the push until it is idle again, so translation, fan-out, rendering,
    signing, sending and settling are all in the per-delivery figure."""
    plan = ctx.plan
    gateway = await ctx.gateway("burst")
    try:
        for i in range(plan.burst_subscribers):
            url = ctx.receiver.hook_url(f"burst-{i}")
            await gateway.subscribe(ctx.session, url, "availability_update")
        # Warm up (connections, caches) on days the burst does not touch.
        await ctx.receiver.reset(ctx.session)
        await gateway.push(ctx.session, "channex", bodies.ari_burst(1, ctx.base() + 400))
        await _drain(ctx, gateway, plan.burst_subscribers)
        await ctx.receiver.reset(ctx.session)
        expected = plan.burst_rows * plan.burst_subscribers
        cpu = await ctx.idle_cpu(gateway)
        loop_cpu = ctx.loop_cpu.get(gateway.name)
        started = time.perf_counter()
        await gateway.push(ctx.session, "channex", bodies.ari_burst(plan.burst_rows, 0))
        stats = await _drain(ctx, gateway, expected)
        cpu_us = _per_unit(cpu, await ctx.idle_cpu(gateway), stats["received"])
        loop_us = ctx.loop_share(gateway, loop_cpu, stats["received"])
        elapsed = time.perf_counter() - started
        body = await ctx.receiver.sample(ctx.session)
    finally:
        stopped = await ctx.stop(gateway)
    if body is None:
        raise RuntimeError("the burst phase delivered nothing; see the gateway log")
    gateway_result = {
        "messages": expected,
        "received": stats["received"],
        "duplicates": stats["duplicates"],
        # From the push to the last arrival: processing the push is part of the burst.
        "per_s": stats["received"] / elapsed if elapsed else 0.0,
        "span_s": stats["span_s"],
        "push_to_last_s": elapsed,
        "losses": max(expected - stats["received"] - stats["waiting_deliveries"], 0),
        "cpu_us_per_delivery": cpu_us,
        "loop_cpu_us_per_delivery": loop_us,
        **stopped,
    }
    body_file = ctx.workdir / "burst-body.json"
    body_file.write_bytes(body)
    await ctx.receiver.reset(ctx.session)
    # As many requests in flight as the gateway may have at its defaults: 16 per subscriber, 64
    # per tenant (the burst's subscriptions share one api key), 128 in all.
    limits = DeliveryConfig()
    concurrency = min(
        limits.concurrency,
        limits.per_subscriber_concurrency * plan.burst_subscribers,
        limits.per_tenant_concurrency,
    )
    client = await run_bare(
        url=f"{ctx.receiver.url}/bare", body_file=body_file, count=expected, concurrency=concurrency
    )
    bare_stats = await ctx.receiver.stats(ctx.session)
    await ctx.receiver.reset(ctx.session)
    bare = {
        "messages": expected,
        "received": bare_stats["received"],
        "per_s": bare_stats["received"] / client["duration_s"] if client["duration_s"] else 0.0,
        "client_errors": client["errors"],
        "cpu_us_per_delivery": _per_unit(0.0, client["sending_cpu_s"], bare_stats["received"]),
    }
    return {
        "rows": plan.burst_rows,
        "subscribers": plan.burst_subscribers,
        "gateway": gateway_result,
        "bare_client": bare,
        "body_bytes": len(body),
    }


def _per_unit(before: float | None, after: float | None, units: int) -> float | None:
    """CPU microseconds per unit of work between two readings."""
    if before is None or after is None or units <= 0:
        return None
    return (after - before) * 1e6 / units


async def history(ctx: Context) -> dict[str, Any]:
    """Ingest throughput on a database holding ``history_deliveries`` delivered messages."""
    db_path = ctx.workdir / "history.db"
    filled = await asyncio.to_thread(prefill, db_path, ctx.plan.history_deliveries)
    gateway = await ctx.gateway("history", db_path)
    try:
        result = await _ingest_once(ctx, gateway, "beds24")
    finally:
        stopped = await ctx.stop(gateway)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return {**filled, **result, **stopped}
