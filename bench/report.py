"""Targets, the printed table, the result JSON and the chart.

Targets are ratios within one run (the gateway against a bare aiohttp server or client loaded by
the same generator on the same machine), so they hold on any machine without tuning numbers.
A missed target is reported, never raised: the run's job is to measure.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.store.sqlite.base import WAL_LIMIT_BYTES

LATENCY_SUBSCRIBERS = 10  # the subscriber count the p99 target is about
# Issue 13's ratios against the floors: the most CPU per push and per delivery, the least ingest
# rate (``targets`` checks them, ``capacity`` prices the load they allow).
PUSH_RATIO, DELIVERY_RATIO = 2.0, 1.5
INGEST_RATE_RATIO = 0.7


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def push_ratios(durable: dict[str, Any], ingest: dict[str, Any], source: str) -> dict[str, Any]:
    """One round's ingest of ``source`` against the durable floor: CPU per push and req/s."""
    gateway, floor = ingest.get(source, {}), durable.get(source, {})
    return {
        "cpu": _ratio(gateway.get("cpu_us_per_push"), floor.get("cpu_us_per_push")),
        "rps": _ratio(gateway.get("rps"), floor.get("rps")),
    }


def median_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of the durable floor and ingest, run alternately (``--rounds``), as one run: per
    source the round whose CPU-per-push ratio is the median (its figures are the run's
    ``durable_floor`` and ``ingest``), and every round's ratios beside the medians. One round's
    ratio swings by a tenth on this shared machine; the median of several swings less."""
    durable: dict[str, Any] = {}
    ingest: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    sources = sorted({s for r in rounds for s in r["ingest"] if s in r["durable_floor"]})
    for source in sources:
        each = [push_ratios(r["durable_floor"], r["ingest"], source) for r in rounds]
        measured = [(ratio["cpu"], n) for n, ratio in enumerate(each) if ratio["cpu"] is not None]
        # The lower middle of an even count: a round that was run, never an average of two.
        chosen = sorted(measured)[(len(measured) - 1) // 2][1] if measured else 0
        durable[source] = rounds[chosen]["durable_floor"][source]
        ingest[source] = rounds[chosen]["ingest"][source]
        rates = [ratio["rps"] for ratio in each if ratio["rps"] is not None]
        ratios[source] = {
            "cpu": [ratio["cpu"] for ratio in each],
            "rps": [ratio["rps"] for ratio in each],
            "median_cpu": each[chosen]["cpu"],
            "median_rps": statistics.median_low(rates) if rates else None,
        }
    return {"durable_floor": durable, "ingest": ingest, "ratios": ratios}


def _target(name: str, value: float | None, op: str, limit: float, unit: str) -> dict[str, Any]:
    passed: bool | None = None
    if value is not None:
        passed = value >= limit if op == ">=" else value <= limit
    return {"name": name, "value": value, "op": op, "limit": limit, "unit": unit, "pass": passed}


def _e2e_for_target(e2e: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The phase with 10 subscribers, or (quick runs) the largest count below it."""
    candidates = [p for p in e2e if p["subscribers"] <= LATENCY_SUBSCRIBERS]
    return max(candidates, key=lambda p: p["subscribers"]) if candidates else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's table (CPU per unit of work and rates against the floors, measured in the same
    run), then the standing ones (history, memory, losses)."""
    out = []
    durable, ingest = results.get("durable_floor", {}), results.get("ingest", {})
    medians = (results.get("rounds") or {}).get("ratios", {})
    for source in ("beds24", "channex"):
        if source in durable and source in ingest:
            ratios = push_ratios(durable, ingest, source)
            cpu, rps, of = ratios["cpu"], ratios["rps"], ""
            if source in medians:
                cpu, rps = medians[source]["median_cpu"], medians[source]["median_rps"]
                of = f", median of {len(medians[source]['cpu'])} rounds"
            name = f"CPU per push, {source} / durable floor{of}"
            out.append(_target(name, cpu, "<=", PUSH_RATIO, "x"))
            name = f"ingest {source} req/s / durable floor{of}"
            out.append(_target(name, rps, ">=", INGEST_RATE_RATIO, "x"))
    burst = results.get("burst")
    if burst:
        gw, bare = burst["gateway"], burst["bare_client"]
        value = _ratio(gw.get("cpu_us_per_delivery"), bare.get("cpu_us_per_delivery"))
        name = "CPU per delivery, burst / bare client"
        out.append(_target(name, value, "<=", DELIVERY_RATIO, "x"))
        value = _ratio(gw["per_s"], bare["per_s"])
        out.append(_target("burst delivery rate / bare client", value, ">=", 0.6, "x"))
    delivery = results.get("delivery")
    if delivery:
        value = _ratio(delivery["gateway"]["per_s"], delivery["bare_client"]["per_s"])
        out.append(_target("peak deliveries / bare client", value, ">=", 0.6, "x"))
    phase = _e2e_for_target(results.get("e2e", []))
    if phase:
        name = f"p99 end-to-end at {phase['rate']:g}/s x {phase['subscribers']} subscribers"
        out.append(_target(name, phase["p99_ms"], "<=", 50.0, "ms"))
    history = results.get("history")
    if history and "beds24" in ingest:
        value = _ratio(history["rps"], ingest["beds24"]["rps"])
        name = f"ingest with {history['stored_deliveries']:,} stored deliveries / empty database"
        out.append(_target(name, value, ">=", 0.9, "x"))
    peak = results.get("rss", {}).get("peak_mb")
    if peak is not None:
        out.append(_target("peak RSS of the gateway", peak, "<=", 200.0, "MB"))
    if "losses" in results:
        out.append(_target("lost deliveries", float(results["losses"]), "<=", 0.0, ""))
    return out


def capacity(results: dict[str, Any]) -> dict[str, Any]:
    """Whether two latency and rate targets are reachable on this machine at all, worked out from
    the floors measured in the same run.

    ``e2e``: the CPU the end-to-end load of the p99 target (pushes/s, and deliveries/s for each
    subscriber) costs at the floors' own prices (the durable floor per push, the bare client per
    POST), at the prices the CPU targets allow (2x, 1.5x), and at the gateway's measured CPU per
    delivery (which carries its share of the push). A gateway is one process whose Python runs
    on one core at a time: past 1.0 CPU it falls behind and its latency grows without bound,
    whatever the code.
    ``ingest``: a process bound to one core answers at most 1 / (CPU per push) pushes a second,
    so 0.7x the durable floor's rate needs at most this much CPU per push, as a ratio of the
    floor's: the rate target stated as a CPU one (beside the ``<= 2x`` CPU target)."""
    out: dict[str, Any] = {}
    durable = results.get("durable_floor", {})
    bare = (results.get("delivery") or {}).get("bare_client", {})
    phase = _e2e_for_target(results.get("e2e", []))
    push_cpu = durable.get("beds24", {}).get("cpu_us_per_push")  # e2e pushes are Beds24's
    post_cpu = bare.get("cpu_us_per_delivery")
    if phase and push_cpu and post_cpu:
        pushes = phase["rate"]
        deliveries = pushes * phase["subscribers"]
        at_floors = (pushes * push_cpu + deliveries * post_cpu) / 1e6
        at_targets = (pushes * push_cpu * PUSH_RATIO + deliveries * post_cpu * DELIVERY_RATIO) / 1e6
        spent = phase.get("cpu_us_per_delivery")
        out["e2e"] = {
            "pushes_per_s": pushes,
            "deliveries_per_s": deliveries,
            "cpus_at_floors": at_floors,
            "cpus_at_target_ratios": at_targets,
            "cpus_at_gateway_cost": None if spent is None else deliveries * spent / 1e6,
        }
    for source, run in durable.items():
        if run.get("cpu_us_per_push") and run.get("rps"):
            budget = 1e6 / (INGEST_RATE_RATIO * run["rps"])
            measured = results.get("ingest", {}).get(source, {}).get("cpu_us_per_push")
            out.setdefault("ingest", {})[source] = {
                "cpu_us_per_push_allowed": budget,
                "ratio_allowed": budget / run["cpu_us_per_push"],
                "cpu_us_per_push_gateway": measured,
            }
    return out


def capacity_lines(capacity: dict[str, Any]) -> list[str]:
    lines = []
    e2e = capacity.get("e2e")
    if e2e:
        spent = e2e["cpus_at_gateway_cost"]
        lines.append(
            f"  end to end at {e2e['pushes_per_s']:g} pushes/s, {e2e['deliveries_per_s']:,.0f}"
            f" deliveries/s: {e2e['cpus_at_floors']:.2f} CPU at the floors' cost,"
            f" {e2e['cpus_at_target_ratios']:.2f} at the targets' ratios"
            f" ({PUSH_RATIO:g}x per push, {DELIVERY_RATIO:g}x per delivery);"
            f" at the gateway's measured cost per delivery {_num(spent, 2)}"
            " (one process: 1.00 at most)"
        )
    for source, run in capacity.get("ingest", {}).items():
        lines.append(
            f"  ingest {source} at {INGEST_RATE_RATIO:g}x the durable floor's rate on one core:"
            f" at most {run['cpu_us_per_push_allowed']:,.0f} µs CPU per push"
            f" ({run['ratio_allowed']:.2f}x the floor's); the gateway spent"
            f" {_num(run['cpu_us_per_push_gateway'])}"
        )
    return ["", "capacity (from this run's floors):", *lines] if lines else []


def total_losses(results: dict[str, Any]) -> int:
    losses = sum(int(p["losses"]) for p in results.get("e2e", []))
    for phase in ("delivery", "burst"):
        if results.get(phase):
            losses += int(results[phase]["gateway"]["losses"])
    return losses


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def round_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The table's lines for ``--rounds``: each round's ratios and their medians, per source."""
    rows = []
    for source, ratios in (results.get("rounds") or {}).get("ratios", {}).items():
        detail = (
            f"against the durable floor, round by round: CPU per push"
            f" {' / '.join(_num(r, 2) for r in ratios['cpu'])} (median {_num(ratios['median_cpu'], 2)},"
            f" the round shown above); req/s {' / '.join(_num(r, 2) for r in ratios['rps'])}"
            f" (median {_num(ratios['median_rps'], 2)})"
        )
        rows.append((f"ingest, {len(ratios['cpu'])} rounds", source, detail))
    return rows


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    meta = results["meta"]
    generator = f"{meta['generator']} -c{meta['plan']['connections']}"
    for source, run in results.get("floor", {}).items():
        share = run["generator_cpu_share"] * 100
        detail = (
            f"{_num(run['rps'])} req/s, {_num(run.get('cpu_us_per_push'))} µs CPU/push"
            f" ({generator}, generator used {share:.0f} % of a CPU)"
        )
        rows.append(("floor (bare aiohttp)", source, detail))
    for source, run in results.get("durable_floor", {}).items():
        of_floor = _ratio(run["rps"], results.get("floor", {}).get(source, {}).get("rps"))
        share = "" if of_floor is None else f", {of_floor:.2f}x the floor"
        detail = f"{_num(run['rps'])} req/s, {_num(run.get('cpu_us_per_push'))} µs CPU/push{share}"
        rows.append(("floor + durable row", source, detail))
    for source, run in results.get("ingest", {}).items():
        detail = (
            f"{_num(run['rps'])} req/s, {_num(run.get('cpu_us_per_push'))} µs CPU/push"
            f" (processing included; event loop {_num(run.get('loop_cpu_us_per_push'))}),"
            f" p99 answer {_num(run['latency_ms']['p99'], 1)} ms,"
            f" processed {_num(run['processed_per_s'])}/s, RSS {_num(run['peak_rss_mb'])} MB"
        )
        of_durable = _ratio(run["rps"], results.get("durable_floor", {}).get(source, {}).get("rps"))
        if of_durable is not None:
            detail += f"; {of_durable:.2f}x the durable floor"
        rows.append(("ingest", source, detail))
    rows += round_rows(results)
    for phase in results.get("e2e", []):
        detail = (
            f"p50 {_num(phase['p50_ms'], 1)} / p95 {_num(phase['p95_ms'], 1)} /"
            f" p99 {_num(phase['p99_ms'], 1)} / max {_num(phase['max_ms'], 1)} ms;"
            f" {_num(phase['received'])}/{_num(phase['expected'])} delivered"
            f" at {_num(phase['deliveries_per_s'])}/s,"
            f" {_num(phase.get('cpu_us_per_delivery'))} µs CPU/delivery, losses {phase['losses']},"
            f" push errors {phase['push_errors']}"
        )
        leased = phase.get("leased") or {}
        if sum(leased.values()):
            share = 100 * leased.get("fan-out", 0) / sum(leased.values())
            detail += f"; {share:.0f} % leased at fan-out"
        label = f"{phase['subscribers']} sub x {phase['pushes_ok']} pushes"
        rows.append((f"end-to-end @ {phase['rate']:g}/s", label, detail))
    delivery = results.get("delivery")
    if delivery:
        gw, bare = delivery["gateway"], delivery["bare_client"]
        rows.append(
            (
                "peak delivery",
                f"{gw['messages']:,} msgs",
                f"gateway {_num(gw['per_s'])}/s, {_num(gw.get('cpu_us_per_delivery'))} µs"
                f" CPU/delivery vs bare client {_num(bare['per_s'])}/s,"
                f" {_num(bare.get('cpu_us_per_delivery'))} µs CPU/POST"
                f" ({delivery['body_bytes']:,} B bodies), losses {gw['losses']}; gateway rate by"
                f" quarter of the drain: {' / '.join(_num(r) for r in gw['rate_by_quarter'])}",
            )
        )
    burst = results.get("burst")
    if burst:
        gw, bare = burst["gateway"], burst["bare_client"]
        rows.append(
            (
                "availability burst",
                f"{burst['rows']:,} rows x {burst['subscribers']} subs",
                f"gateway {_num(gw['per_s'])}/s, {_num(gw.get('cpu_us_per_delivery'))} µs"
                f" CPU/delivery (event loop {_num(gw.get('loop_cpu_us_per_delivery'))})"
                f" vs bare client {_num(bare['per_s'])}/s,"
                f" {_num(bare.get('cpu_us_per_delivery'))} µs CPU/POST"
                f" ({burst['body_bytes']:,} B bodies), losses {gw['losses']}",
            )
        )
    history = results.get("history")
    if history:
        rows.append(
            (
                "ingest with history",
                f"{history['stored_deliveries']:,} stored",
                f"{_num(history['rps'])} req/s (db {_num(history['db_mb'])} MB, first push"
                f" after start {_num(history['first_push_ms'])} ms, prefill"
                f" {_num(history['prefill_s'])} s)",
            )
        )
    rss = results.get("rss", {})
    rows.append(("peak RSS", "gateway", f"{_num(rss.get('peak_mb'), 1)} MB"))
    log = results.get("log", {})
    if log.get("peak_mb") is not None:
        per = log["per_gateway_mb"]
        largest = max(per, key=per.get)
        rows.append(
            (
                "peak SQLite log",
                "gateway",
                f"{_num(log['peak_mb'], 1)} MB write-ahead log ({largest}; restarted past"
                f" {WAL_LIMIT_BYTES / 2**20:,.0f} MiB)",
            )
        )
    load = meta.get("load") or {}
    if load.get("busy_share") is not None:
        rows.append(
            (
                "machine",
                f"{meta['cpus']} CPUs",
                f"{load['busy_share'] * 100:.0f} % busy over the run (every process);"
                f" load average {load['loadavg_start']} -> {load['loadavg_end']}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    if results.get("scale"):
        lines += scale_table(results["scale"])
    lines += capacity_lines(results.get("capacity", {}))
    lines.append("")
    lines.append("targets:")
    for t in results.get("targets", []):
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"  {verdict:<4}  {t['name']}: {value} {t['unit']} ({t['op']} {t['limit']:g})")
    return "\n".join(lines)


def result_path(out_dir: Path, when: datetime, suffix: str) -> Path:
    """``<out>/<YYYY-MM-DD>.json``; a second run on the same day gets ``-2``, and so on."""
    stem = when.strftime("%Y-%m-%d")
    path, n = out_dir / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = out_dir / f"{stem}-{n}{suffix}"
    return path


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def cpu_bars(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(label, CPU µs per unit, colour) for each floor and gateway figure the run measured."""
    bars: list[tuple[str, float, str]] = []
    for section, label, colour in (
        ("floor", "floor", "C7"),
        ("durable_floor", "durable floor", "C0"),
        ("ingest", "gateway", "C1"),
    ):
        for source, run in results.get(section, {}).items():
            if run.get("cpu_us_per_push") is not None:
                bars.append((f"push: {label}\n{source}", run["cpu_us_per_push"], colour))
    burst = results.get("burst")
    if burst:
        for side, label, colour in (
            ("bare_client", "bare client", "C5"),
            ("gateway", "gateway", "C4"),
        ):
            value = burst[side].get("cpu_us_per_delivery")
            if value is not None:
                bars.append((f"delivery: {label}\nburst", value, colour))
    delivery = results.get("delivery")
    if delivery and delivery["gateway"].get("cpu_us_per_delivery") is not None:
        bars.append(("delivery: gateway\nreplay", delivery["gateway"]["cpu_us_per_delivery"], "C2"))
    return bars


def _cpu_bars(axes: Any, results: dict[str, Any]) -> None:
    bars = cpu_bars(results)
    labels = [b[0] for b in bars]
    axes.barh(labels, [b[1] for b in bars], color=[b[2] for b in bars])
    for y, (_, value, _) in enumerate(bars):
        axes.text(value, y, f" {value:,.0f}", va="center", fontsize="small")
    axes.invert_yaxis()
    axes.tick_params(axis="y", labelsize="small")
    axes.set(xlabel="CPU µs per unit (from /proc, until the gateway is idle)")
    axes.set_title("CPU per push and per delivery")


def write_chart(results: dict[str, Any], path: Path) -> bool:
    """Latency percentiles and delivery throughput against subscriber count. False (and no file)
    when matplotlib is not installed: it is a bench extra, not a gateway dependency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    e2e = results.get("e2e", [])
    scale = {k: v for k, v in results.get("scale", {}).items() if "ingest_rps" in v}
    if not e2e:
        if not scale:
            return False
        fig, only = plt.subplots(1, 1, figsize=(7, 4.6))
        _scale_bars(only, scale)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True
    subs = [p["subscribers"] for p in e2e]
    if scale:
        fig, (lat, thr, cpu, scaled) = plt.subplots(1, 4, figsize=(21, 4.6))
        _scale_bars(scaled, scale)
    else:
        fig, (lat, thr, cpu) = plt.subplots(1, 3, figsize=(16, 4.6))
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        lat.plot(subs, [p[key] or 0 for p in e2e], marker="o", label=label)
    lat.axhline(50, color="grey", linestyle="--", linewidth=1, label="p99 target (50 ms)")
    lat.set(xscale="log", yscale="log", xlabel="subscribers", ylabel="push -> subscriber (ms)")
    lat.set_xticks(subs, [str(n) for n in subs])
    lat.set_title(f"end-to-end latency at {e2e[0]['rate']:g} pushes/s")
    lat.legend()
    offered = [p["rate"] * p["subscribers"] for p in e2e]
    thr.plot(subs, offered, linestyle=":", color="grey", label="offered")
    thr.plot(subs, [p["deliveries_per_s"] for p in e2e], marker="o", label="delivered")
    delivery = results.get("delivery")
    if delivery:
        thr.axhline(
            delivery["gateway"]["per_s"],
            color="C2",
            linestyle="--",
            label="gateway, released backlog",
        )
        thr.axhline(
            delivery["bare_client"]["per_s"], color="C3", linestyle="--", label="bare client"
        )
    burst = results.get("burst")
    if burst:
        thr.axhline(burst["gateway"]["per_s"], color="C4", linestyle="-.", label="gateway, burst")
        thr.axhline(
            burst["bare_client"]["per_s"], color="C5", linestyle="-.", label="bare client, burst"
        )
    thr.set(xscale="log", yscale="log", xlabel="subscribers", ylabel="deliveries/s")
    thr.set_xticks(subs, [str(n) for n in subs])
    thr.set_title("delivery throughput")
    thr.legend(fontsize="small")
    _cpu_bars(cpu, results)
    meta = results["meta"]
    fig.suptitle(f"octo-gateway bench {meta['date']} ({meta['generator']}, {meta['cpus']} CPUs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _scale_bars(axes: Any, scale: dict[str, dict[str, Any]]) -> None:
    """The scale phase: ingest req/s and end-to-end p99 per store and process count."""
    names = list(scale)
    rps = [scale[n]["ingest_rps"] for n in names]
    bars = axes.bar(names, rps, color=["C0" if n.startswith("sqlite") else "C1" for n in names])
    for bar, name in zip(bars, names, strict=True):
        p99 = scale[name].get("e2e_p99_ms")
        label = f"p99 {p99:.0f} ms" if p99 is not None else ""
        axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center")
    axes.set(ylabel="ingest pushes/s (no subscribers)")
    axes.set_title("stores and processes (p99 at the e2e rate, 10 subscribers)")


def scale_table(scale: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "scale (bench/scale.py)        ingest/s  gw us/push  db us/push  e2e p99 ms  deliv/s"
        "  gw us/deliv  db us/deliv",
    ]
    for name, row in scale.items():
        if "ingest_rps" not in row:
            lines.append(f"  {name:<27} {row.get('skipped', '')}")
            continue
        lines.append(
            f"  {name:<27} {_num(row['ingest_rps']):>8}  {_num(row['ingest_cpu_us_per_push']):>10}"
            f"  {_num(row['db_cpu_us_per_push']):>10}  {_num(row['e2e_p99_ms']):>10}"
            f"  {_num(row['deliveries_per_s']):>7}  {_num(row['cpu_us_per_delivery']):>11}"
            f"  {_num(row['db_cpu_us_per_delivery']):>11}"
        )
    return lines
