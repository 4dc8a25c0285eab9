"""Phase ``scale``: the gateway on SQLite (one process) beside PostgreSQL with 1 and 2 processes,
in the same run.

For each setup: ingest throughput (closed loop, Beds24 pushes, no subscribers) and end-to-end
latency at the plan's push rate with 10 subscribers. PostgreSQL is a throwaway server from the
machine's binaries (tests/postgres.py) with its durable defaults (fsync on, synchronous_commit on);
two processes are ``gateway serve --workers 2`` sharing one port. CPU is counted per gateway
process (all workers) and for the PostgreSQL server, so docs/scaling.md can project from the cost
of a push and of a delivery on each side.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import bodies
from bench.gateway_proc import Gateway, bench_config, to_toml
from bench.load import run_closed, run_open
from bench.phases import Context, _drain, _per_unit, _subscribe, _warm_up
from bench.procs import cpu_seconds
from tests.postgres import PostgresServer, missing_reason

SUBSCRIBERS = 10


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (the workers of serve --workers)."""
    return sum(cpu_seconds(p) or 0.0 for p in [pid, *_children(pid)])


class PostgresGateway(Gateway):
    """A gateway (``workers`` processes) on a PostgreSQL database."""

    def __init__(self, workdir: Path, name: str, url: str, workers: int) -> None:
        super().__init__(workdir, name)
        config = bench_config(self.db_path, self.port)
        config["storage"].pop("path", None)
        config["storage"]["url"] = url
        self.config_path.write_text(to_toml(config), encoding="utf-8")
        if workers > 1:
            self.args += ["--workers", str(workers)]
        self.database_url = url

    def cpu_seconds(self) -> float | None:
        return _tree_cpu(self.pid) if self.proc is not None else None

    async def _fetch(self, sql: str) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    async def backlog(self) -> tuple[int, int]:
        [row] = await self._fetch(
            "select (select count(*) from pushes where state = 'accepted') as p,"
            " (select count(*) from deliveries where state in ('pending', 'leased')) as d"
        )
        return int(row["p"]), int(row["d"])

    async def states(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for table in ("pushes", "deliveries"):
            rows = await self._fetch(f"select state, count(*) as n from {table} group by state")
            found[table] = {str(r["state"]): int(r["n"]) for r in rows}
        return found


def _server_cpu(server: PostgresServer) -> float:
    """CPU seconds of every process of the PostgreSQL server (postmaster and backends)."""
    try:
        pid = int((server.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return _tree_cpu(pid)


async def _measure(ctx: Context, gateway: Gateway, server: PostgresServer | None) -> dict[str, Any]:
    plan = ctx.plan
    await gateway.start()
    try:
        # Ingest throughput, no subscribers.
        await gateway.push(
            ctx.session, "beds24", bodies.expand(bodies.template("beds24"), ctx.base())
        )
        cpu = await ctx.idle_cpu(gateway)
        db_cpu = _server_cpu(server) if server else None
        ingest = await run_closed(
            generator=plan.generator,
            url=f"{gateway.url}/ingest/beds24",
            template_file=ctx.template_file("beds24"),
            token=gateway.tokens["beds24"],
            base=ctx.base(),
            duration=plan.throughput_seconds,
            connections=plan.connections,
        )
        cpu_push = _per_unit(cpu, await ctx.idle_cpu(gateway), ingest["ok"])
        db_push = (
            _per_unit(db_cpu, _server_cpu(server), ingest["ok"]) if server is not None else None
        )
        # End to end at the plan's rate, 10 subscribers.
        await _subscribe(ctx, gateway, SUBSCRIBERS, "scale-")
        await _warm_up(ctx, gateway, SUBSCRIBERS)
        cpu = await ctx.idle_cpu(gateway)
        db_cpu = _server_cpu(server) if server else None
        seconds = min(plan.e2e_seconds, plan.e2e_max_deliveries / (plan.rate * SUBSCRIBERS))
        sender = await run_open(
            url=f"{gateway.url}/ingest/beds24",
            template_file=ctx.template_file("beds24", with_note=True),
            token=gateway.tokens["beds24"],
            base=ctx.base(),
            rate=plan.rate,
            duration=seconds,
        )
        expected = sender["ok"] * SUBSCRIBERS
        stats = await _drain(ctx, gateway, expected)
        units = stats["received"]
        cpu_delivery = _per_unit(cpu, await ctx.idle_cpu(gateway), units)
        db_delivery = _per_unit(db_cpu, _server_cpu(server), units) if server is not None else None
    finally:
        stopped = await ctx.stop(gateway)
    latency = stats["latency_ms"]
    return {
        "ingest_rps": ingest["rps"],
        "ingest_cpu_us_per_push": cpu_push,
        "db_cpu_us_per_push": db_push,
        "e2e_rate": plan.rate,
        "e2e_subscribers": SUBSCRIBERS,
        "e2e_expected": expected,
        "e2e_received": units,
        "e2e_duplicates": stats["duplicates"],
        "e2e_losses": max(expected - units - stats["waiting_deliveries"], 0),
        "e2e_p50_ms": latency["p50"],
        "e2e_p99_ms": latency["p99"],
        "deliveries_per_s": units / stats["span_s"] if stats["span_s"] else 0.0,
        "cpu_us_per_delivery": cpu_delivery,
        "db_cpu_us_per_delivery": db_delivery,
        **stopped,
    }


async def scale(ctx: Context) -> dict[str, Any]:
    """SQLite x1, PostgreSQL x1, PostgreSQL x2 (``serve --workers 2``), one after the other."""
    results: dict[str, Any] = {}
    results["sqlite-1"] = await _measure(ctx, Gateway(ctx.workdir, "scale-sqlite"), None)
    reason = missing_reason()
    if reason is not None:
        results["postgres"] = {"skipped": reason}
        return results
    server = await asyncio.to_thread(PostgresServer(durable=True).start)
    try:
        for workers in (1, 2):
            url = await asyncio.to_thread(server.create_database)
            gateway = PostgresGateway(ctx.workdir, f"scale-pg-{workers}", url, workers)
            started = time.perf_counter()
            results[f"postgres-{workers}"] = await _measure(ctx, gateway, server)
            results[f"postgres-{workers}"]["phase_s"] = time.perf_counter() - started
    finally:
        await asyncio.to_thread(server.stop)
    return results
