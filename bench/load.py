"""Load generators, each run as its own process so it never shares a CPU slice with its target's
event loop more than the machine forces it to.

- ``closed``: the throughput generator (N connections, each sends its next push as soon as the
  last is answered). ``wrk`` with ``bench/wrk/unique_body.lua`` is preferred because it is C and
  far from being the bottleneck; this Python version is the fallback when wrk is not installed
  (results say which one ran: a Python client caps the floor lower than wrk does).
- ``open``: the open-loop sender for end-to-end latency. Push i is sent at start + i/rate whether
  or not earlier ones were answered, and carries its *scheduled* send time in the booking's
  comments, so a slow gateway cannot hide its delay by slowing the sender (coordinated omission).
- ``bare``: the delivery baseline, a bare aiohttp client POSTing a delivered body to the same
  receiver with the gateway's delivery concurrency.

Each prints one JSON line. ``python -m bench.load {closed,open,bare} --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.bodies import expand, sent_note
from bench.procs import PYTHON, run_json

LUA = Path(__file__).resolve().parent / "wrk" / "unique_body.lua"


def _quantiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def at(fraction: float) -> float | None:
        if not ordered:
            return None
        return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)] * 1000

    return {"p50": at(0.5), "p99": at(0.99), "max": ordered[-1] * 1000 if ordered else None}


# -- child side ------------------------------------------------------------------------------


async def closed_loop(
    url: str, template: str, token: str, base: int, duration: float, connections: int
) -> dict[str, Any]:
    numbers = itertools.count(base + 1)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    headers = {"Content-Type": "application/json", "X-Gateway-Token": token}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:
                body = expand(template, next(numbers))
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as answer:
                        await answer.read()
                        statuses[answer.status] += 1
                except (aiohttp.ClientError, OSError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {
        "requests": sum(statuses.values()),
        "duration_s": elapsed,
        "http_errors": sum(n for status, n in statuses.items() if status >= 400),
        "errors": dict(errors),
        "latency_ms": _quantiles(latencies),
    }


async def open_loop(
    url: str, template: str, token: str, base: int, rate: float, duration: float
) -> dict[str, Any]:
    total = max(int(rate * duration), 1)
    headers = {"Content-Type": "application/json", "X-Gateway-Token": token}
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    answer_times: list[float] = []
    max_lag = 0.0
    connector = aiohttp.TCPConnector(limit=1024)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(body: bytes) -> None:
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    statuses[answer.status] += 1
            except (aiohttp.ClientError, OSError) as exc:
                errors[type(exc).__name__] += 1
                return
            answer_times.append(time.perf_counter() - started)

        tasks: list[asyncio.Task[None]] = []
        wall0, mono0 = time.time(), time.perf_counter()
        start = mono0 + 0.05
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            max_lag = max(max_lag, time.perf_counter() - due)
            note = sent_note(wall0 + (due - mono0))
            tasks.append(asyncio.create_task(send(expand(template, base + i, note))))
        send_span = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return {
        "sent": total,
        "ok": sum(n for status, n in statuses.items() if 200 <= status < 300),
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": dict(errors),
        "send_span_s": send_span,
        "max_lag_ms": max_lag * 1000,
        "first_number": base,
        "answer_ms": _quantiles(answer_times),
    }


async def bare_client(url: str, body: bytes, count: int, concurrency: int) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    numbers = iter(range(count))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in numbers:
                headers = {"Content-Type": "application/json", "webhook-id": f"msg_bare_{i}"}
                try:
                    async with session.post(url, data=body, headers=headers) as answer:
                        await answer.read()
                        statuses[answer.status] += 1
                except (aiohttp.ClientError, OSError) as exc:
                    errors[type(exc).__name__] += 1

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    # The CPU of the sending alone (not the interpreter's start-up): what one POST costs.
    return {
        "sent": count,
        "ok": ok,
        "errors": dict(errors),
        "duration_s": elapsed,
        "sending_cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    closed = sub.add_parser("closed", help="closed-loop throughput (the wrk fallback)")
    opened = sub.add_parser("open", help="open-loop sender at a fixed rate")
    for p in (closed, opened):
        p.add_argument("--url", required=True)
        p.add_argument("--template-file", type=Path, required=True)
        p.add_argument("--token", required=True)
        p.add_argument("--base", type=int, default=0)
        p.add_argument("--duration", type=float, required=True)
    closed.add_argument("--connections", type=int, default=32)
    opened.add_argument("--rate", type=float, required=True)
    bare = sub.add_parser("bare", help="bare aiohttp client posting one body COUNT times")
    bare.add_argument("--url", required=True)
    bare.add_argument("--body-file", type=Path, required=True)
    bare.add_argument("--count", type=int, required=True)
    bare.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    if args.mode == "closed":
        template = args.template_file.read_text(encoding="utf-8")
        result = asyncio.run(
            closed_loop(args.url, template, args.token, args.base, args.duration, args.connections)
        )
    elif args.mode == "open":
        template = args.template_file.read_text(encoding="utf-8")
        result = asyncio.run(
            open_loop(args.url, template, args.token, args.base, args.rate, args.duration)
        )
    else:
        body = args.body_file.read_bytes()
        result = asyncio.run(bare_client(args.url, body, args.count, args.concurrency))
    sys.stdout.write(json.dumps(result) + "\n")


# -- harness side ----------------------------------------------------------------------------


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


async def run_closed(
    *,
    generator: str,
    url: str,
    template_file: Path,
    token: str,
    base: int,
    duration: int,
    connections: int,
) -> dict[str, Any]:
    """One closed-loop throughput run; ``generator`` is ``wrk`` or ``python``. The answer adds
    ``ok`` (answers below 400) and ``rps`` (``ok`` per second) to the generator's report."""
    if generator == "wrk":
        args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s"]
        args += ["-s", str(LUA), url, "--", str(template_file), token, str(base)]
    else:
        args = [PYTHON, "-m", "bench.load", "closed", "--url", url]
        args += ["--template-file", str(template_file), "--token", token, "--base", str(base)]
        args += ["--duration", str(duration), "--connections", str(connections)]
    result = await run_json(args, timeout=duration + 60)
    result["generator"] = generator
    result["connections"] = connections
    result["ok"] = result["requests"] - result["http_errors"]
    result["rps"] = result["ok"] / result["duration_s"] if result["duration_s"] else 0.0
    result["generator_cpu_share"] = (
        result["cpu_s"] / result["duration_s"] if result["duration_s"] else 0.0
    )
    return result


async def run_open(
    *, url: str, template_file: Path, token: str, base: int, rate: float, duration: float
) -> dict[str, Any]:
    args = [PYTHON, "-m", "bench.load", "open", "--url", url, "--template-file", str(template_file)]
    args += ["--token", token, "--base", str(base), "--rate", str(rate)]
    args += ["--duration", str(duration)]
    return await run_json(args, timeout=duration + 120)


async def run_bare(*, url: str, body_file: Path, count: int, concurrency: int) -> dict[str, Any]:
    args = [PYTHON, "-m", "bench.load", "bare", "--url", url, "--body-file", str(body_file)]
    args += ["--count", str(count), "--concurrency", str(concurrency)]
    return await run_json(args, timeout=600)


if __name__ == "__main__":
    main()
