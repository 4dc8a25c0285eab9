"""The benchmark harness runs end to end on a tiny load, so it can't rot unnoticed.

Nothing here is timed: how fast the gateway is is what ``python -m bench`` reports, and a test that
asserted it would fail on a busy CI machine. These only check that every phase runs, the result
file keeps its shape, and no delivery was lost. They need no wrk (``auto`` falls back to the
Python generator, and one test forces it) and no matplotlib (the chart is then skipped).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

TOP_KEYS = {
    "meta",
    "floor",
    "durable_floor",
    "ingest",
    "e2e",
    "delivery",
    "burst",
    "history",
    "rss",
    "losses",
    "targets",
    "capacity",
    "log",
}
THROUGHPUT_KEYS = {"requests", "ok", "rps", "duration_s", "http_errors", "generator"}
E2E_KEYS = {
    "subscribers",
    "pushes_ok",
    "expected",
    "received",
    "losses",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "deliveries_per_s",
}


def run_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "results"
    command = [sys.executable, "-m", "bench", "--quick", "--out", str(out)]
    command += ["--workdir", str(tmp_path), *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=230)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, files
    result: dict[str, Any] = json.loads(files[0].read_text(encoding="utf-8"))
    return result


@pytest.mark.timeout(180)
def test_quick_run_has_every_phase_and_loses_nothing(tmp_path: Path) -> None:
    results = run_bench(tmp_path)

    assert set(results) >= TOP_KEYS
    for section in ("floor", "durable_floor", "ingest"):
        for source in ("beds24", "channex"):
            assert set(results[section][source]) >= THROUGHPUT_KEYS
            assert results[section][source]["ok"] > 0
    assert [p["subscribers"] for p in results["e2e"]] == [1, 2]
    # Priced from this run's floors: the 2-subscriber phase, both sources.
    assert results["capacity"]["e2e"]["deliveries_per_s"] == 2 * results["e2e"][1]["rate"]
    assert set(results["capacity"]["ingest"]) == {"beds24", "channex"}
    # Every gateway's write-ahead log was watched, and one that took pushes had one.
    assert set(results["log"]["per_gateway_mb"]) == set(results["rss"]["per_gateway_mb"])
    assert results["log"]["per_gateway_mb"]["ingest-beds24"] > 0
    for phase in results["e2e"]:
        assert set(phase) >= E2E_KEYS
        assert phase["pushes_ok"] > 0
        assert phase["losses"] == 0
        assert phase["received"] == phase["expected"]
        # Every message reached the worker one way or the other (warm-up pushes included).
        assert sum(phase["leased"].values()) >= phase["received"]
        assert set(phase["leased"]) <= {"fan-out", "claim"}
    delivery = results["delivery"]
    assert {"gateway", "bare_client"} <= set(delivery)
    assert delivery["gateway"]["losses"] == 0
    assert delivery["gateway"]["received"] == delivery["gateway"]["messages"] > 0
    burst = results["burst"]
    assert burst["gateway"]["losses"] == 0
    assert burst["gateway"]["received"] == burst["gateway"]["messages"] == 100 * 2
    assert burst["gateway"]["cpu_us_per_delivery"] > 0
    assert burst["bare_client"]["cpu_us_per_delivery"] > 0
    for section in ("floor", "durable_floor", "ingest"):
        for source in ("beds24", "channex"):
            assert results[section][source]["cpu_us_per_push"] > 0
    assert results["history"]["stored_deliveries"] == 1_000
    assert results["history"]["ok"] > 0
    assert results["rss"]["peak_mb"] > 0
    assert results["losses"] == 0
    assert {t["name"] for t in results["targets"]} and all(
        {"value", "limit", "pass"} <= set(t) for t in results["targets"]
    )


@pytest.mark.timeout(60)
def test_python_generator_stands_in_for_wrk(tmp_path: Path) -> None:
    results = run_bench(tmp_path, "--generator", "python", "--only", "floor")

    assert results["meta"]["generator"] == "python"
    for source in ("beds24", "channex"):
        assert results["floor"][source]["generator"] == "python"
        assert results["floor"][source]["ok"] > 0
        assert results["floor"][source]["http_errors"] == 0


@pytest.mark.timeout(120)
def test_rounds_alternate_the_durable_floor_and_ingest_and_report_the_median(
    tmp_path: Path,
) -> None:
    results = run_bench(tmp_path, "--only", "durable_floor,ingest", "--rounds", "3")

    rounds = results["rounds"]
    assert len(rounds["each"]) == 3
    # Every round's gateways ran and were watched under names of their own.
    assert {"ingest-beds24", "ingest-beds24-2", "ingest-channex-3"} <= set(
        results["rss"]["per_gateway_mb"]
    )
    for source in ("beds24", "channex"):
        ratios = rounds["ratios"][source]
        assert len(ratios["cpu"]) == 3 and all(r > 0 for r in ratios["cpu"])
        assert ratios["median_cpu"] == sorted(ratios["cpu"])[1]
        # The run's figures are the median round's, one that was measured.
        shown = [r for r in rounds["each"] if r["ingest"][source] == results["ingest"][source]]
        assert (
            len(shown) == 1
            and shown[0]["durable_floor"][source] == (results["durable_floor"][source])
        )
    named = {t["name"]: t for t in results["targets"]}
    cpu = named["CPU per push, beds24 / durable floor, median of 3 rounds"]
    assert cpu["value"] == rounds["ratios"]["beds24"]["median_cpu"]


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_scale_phase_runs_on_sqlite_and_postgres(tmp_path: Path, pg_server: Any) -> None:
    # pg_server: skip (or fail under PG_REQUIRED) where no PostgreSQL can run; the phase starts
    # a durable server of its own.
    results = run_bench(tmp_path, "--generator", "python", "--only", "scale")
    scale = results["scale"]
    assert set(scale) == {"sqlite-1", "postgres-1", "postgres-2"}
    for setup in scale.values():
        assert setup["ingest_rps"] > 0
        assert setup["e2e_received"] >= setup["e2e_expected"] > 0
        assert setup["e2e_losses"] == 0
        assert setup["e2e_duplicates"] == 0
    assert scale["postgres-2"]["db_cpu_us_per_push"] is not None
