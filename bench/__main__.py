"""``python -m bench``: measure the gateway against its floor in one run, print a table, write
``bench/results/<date>.json`` and a PNG chart next to it.

Phases, in order (each gateway phase on a fresh ``python -m gateway serve`` child):

1. floor: a bare aiohttp handler that reads and parses the same JSON (``bench/bare_server.py``);
   then the durable floor: the same handler storing each push as one group-committed SQLite row
   before answering (the least any ingest keeping the gateway's durability promise must do);
2. ingest: Beds24 v2 and Channex ARI pushes, every body unique, no subscribers;
3. e2e: an open-loop sender at 200 pushes/s with 1, 10 and 100 subscribers; latency from the
   push's scheduled send time to its arrival at the receiver process, and losses;
4. delivery: a released backlog against a bare aiohttp client posting to the same receiver;
   burst: one Channex ARI push of 1,800 rows to 5 availability subscribers (9,000 deliveries)
   against a bare aiohttp client POSTing as many bodies;
5. history: ingest again on a database holding 1,000,000 delivered messages; peak RSS;
6. scale (only with ``--only scale``): SQLite with one process beside PostgreSQL with 1 and 2
   processes (bench/scale.py).

The durable floor and ingest run three times, alternately (``--rounds N``): one round's ratio
swings by a tenth on a shared machine, so the push targets take the median round.
``--quick`` is the smoke-test size (a couple of seconds per phase, 1,000 stored deliveries,
1 and 2 subscribers). wrk is used when installed (``apt-get install wrk``), else a Python
generator. A missed target never fails the run: the exit status is about the harness only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp

from bench import phases, profile, report, scale
from bench.load import wrk_available
from bench.phases import Context, Plan
from bench.receiver import Receiver

RESULTS = Path(__file__).resolve().parent / "results"
PHASES: dict[str, Callable[[Context], Awaitable[Any]]] = {
    "floor": phases.floor,
    "durable_floor": phases.durable_floor,
    "ingest": phases.ingest,
    "e2e": phases.e2e,
    "delivery": phases.delivery,
    "burst": phases.burst,
    "history": phases.history,
    "scale": scale.scale,
}
# What runs without --only: everything but the scale phase (it starts its own PostgreSQL and runs
# the gateway three times; ask for it with --only scale).
DEFAULT_PHASES = [name for name in PHASES if name != "scale"]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine_load() -> dict[str, Any]:
    """How busy the machine is (other engineers' test suites share it): the load averages and
    the CPU time of all processes, read from /proc (compare a start and an end reading)."""
    try:
        loadavg = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return {}
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return {"loadavg": loadavg, "cpu_ticks": sum(fields), "idle_ticks": idle, "at": time.time()}


def busy_share(start: dict[str, Any], end: dict[str, Any]) -> float | None:
    """The share of all CPUs that was busy between two readings (ours and everyone else's)."""
    if not start or not end or end["cpu_ticks"] <= start["cpu_ticks"]:
        return None
    total = end["cpu_ticks"] - start["cpu_ticks"]
    return float(1 - (end["idle_ticks"] - start["idle_ticks"]) / total)


def meta(plan: Plan, started: datetime) -> dict[str, Any]:
    return {
        "date": started.isoformat(timespec="seconds"),
        "quick": plan.quick,
        "generator": plan.generator,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": metadata.version("aiohttp"),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "plan": asdict(plan),
    }


async def run(
    plan: Plan, workdir: Path, only: list[str], profile_dir: Path | None = None
) -> dict[str, Any]:
    started = datetime.now().astimezone()
    results: dict[str, Any] = {"meta": meta(plan, started)}
    load_start = machine_load()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        receiver = Receiver(workdir)
        await receiver.start()
        ctx = Context(
            plan=plan, workdir=workdir, session=session, receiver=receiver, profile_dir=profile_dir
        )
        paired = plan.rounds > 1 and "durable_floor" in only and "ingest" in only
        try:
            for name in only:
                began = time.perf_counter()
                if paired and name == "ingest":
                    continue  # run with the durable floor, round by round
                if paired and name == "durable_floor":
                    log(f"durable_floor and ingest, {plan.rounds} rounds ...")
                    results.update(await phases.ingest_rounds(ctx))
                    log(f"{plan.rounds} rounds done in {time.perf_counter() - began:.1f} s")
                    continue
                log(f"{name} ...")
                results[name] = await PHASES[name](ctx)
                log(f"{name} done in {time.perf_counter() - began:.1f} s")
        finally:
            await receiver.stop()
    measured = [v for v in ctx.rss_mb.values() if v is not None]
    results["rss"] = {"peak_mb": max(measured) if measured else None, "per_gateway_mb": ctx.rss_mb}
    results["log"] = {
        "peak_mb": max(ctx.log_mb.values(), default=None),
        "per_gateway_mb": ctx.log_mb,
    }
    results["losses"] = report.total_losses(results)
    results["targets"] = report.targets(results)
    results["capacity"] = report.capacity(results)
    results["meta"]["seconds"] = (datetime.now().astimezone() - started).total_seconds()
    load_end = machine_load()
    results["meta"]["load"] = {
        "loadavg_start": load_start.get("loadavg"),
        "loadavg_end": load_end.get("loadavg"),
        "busy_share": busy_share(load_start, load_end),
    }
    return results


def subscriber_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected counts of 1 or more: {text!r}")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke-test size (about 30 s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="throughput load generator (auto: wrk when installed)",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_PHASES),
        help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all but scale)",
    )
    parser.add_argument(
        "--subscribers",
        type=subscriber_counts,
        default=None,
        help="comma-separated subscriber counts for the e2e phase (default: 1,10,100)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="run the durable floor and ingest this many times, alternately; the push targets"
        " take the median round (default: 3, with --quick 1)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, dbs)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="attach py-spy to each gateway and write its stacks here (figures then skewed)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in PHASES]
    if unknown:
        print(f"unknown phase(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if wrk_available() else "python"
        if generator == "python":
            log(
                "wrk not found: using the Python generator (it may cap the floor; apt-get install wrk)"
            )
    elif generator == "wrk" and not wrk_available():
        print("--generator wrk: wrk is not installed", file=sys.stderr)
        return 2
    plan = Plan.quick_plan(generator) if args.quick else Plan(generator=generator)
    if args.subscribers:
        plan = dataclasses.replace(plan, e2e_subscribers=args.subscribers)
    if args.rounds is not None:
        if args.rounds < 1:
            print("--rounds: at least 1", file=sys.stderr)
            return 2
        plan = dataclasses.replace(plan, rounds=args.rounds)
    workdir = Path(tempfile.mkdtemp(prefix="octo-bench-", dir=args.workdir))
    log(f"scratch folder {workdir}")
    ok = False
    try:
        if args.profile is not None and not profile.available():
            print("--profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
            return 2
        results = asyncio.run(run(plan, workdir, only, args.profile))
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs and databases kept in {workdir}")
    print(report.table(results))
    when = datetime.now()
    json_path = report.result_path(args.out, when, ".json")
    report.write_json(results, json_path)
    print(f"\nresults: {json_path}")
    chart = json_path.with_suffix(".png")
    if report.write_chart(results, chart):
        print(f"chart:   {chart}")
    else:
        print("chart:   not written (needs matplotlib and the e2e phase)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
