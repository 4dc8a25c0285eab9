"""The bench's capacity lines: the CPU a target's load needs, worked out from the run's floors.

Pure arithmetic on a results dict shaped as ``python -m bench`` writes it (no processes), so a
wrong formula or a renamed field shows here rather than as a misleading line in a report.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import report


def results(**e2e: Any) -> dict[str, Any]:
    phase = {"subscribers": 10, "rate": 200.0, "cpu_us_per_delivery": 500.0, **e2e}
    return {
        "durable_floor": {
            "beds24": {"cpu_us_per_push": 400.0, "rps": 2000.0},
            "channex": {"cpu_us_per_push": 300.0, "rps": 4000.0},
        },
        "ingest": {"beds24": {"cpu_us_per_push": 900.0}, "channex": {"cpu_us_per_push": 600.0}},
        "delivery": {"bare_client": {"cpu_us_per_delivery": 350.0}},
        "e2e": [{**phase, "subscribers": 1}, phase, {**phase, "subscribers": 100}],
    }


def test_the_end_to_end_load_is_priced_at_the_floors_the_target_ratios_and_the_gateway() -> None:
    e2e = report.capacity(results())["e2e"]

    assert e2e["pushes_per_s"] == 200 and e2e["deliveries_per_s"] == 2000  # the 10-subscriber phase
    # 200 Beds24 pushes at 400 µs + 2,000 POSTs at 350 µs.
    assert e2e["cpus_at_floors"] == pytest.approx(0.08 + 0.7)
    assert e2e["cpus_at_target_ratios"] == pytest.approx(0.08 * 2 + 0.7 * 1.5)
    assert e2e["cpus_at_gateway_cost"] == pytest.approx(1.0)


def test_ingest_at_the_rate_target_allows_one_core_divided_by_that_rate() -> None:
    ingest = report.capacity(results())["ingest"]

    # 0.7 x 2,000 pushes/s on one core: 1 s / 1,400 = 714 µs a push, 1.79x the floor's 400.
    assert ingest["beds24"]["cpu_us_per_push_allowed"] == pytest.approx(1e6 / 1400)
    assert ingest["beds24"]["ratio_allowed"] == pytest.approx(1e6 / 1400 / 400)
    assert ingest["beds24"]["cpu_us_per_push_gateway"] == 900
    assert ingest["channex"]["cpu_us_per_push_allowed"] == pytest.approx(1e6 / 2800)


def test_the_lines_name_the_figures_and_a_run_without_floors_prints_none() -> None:
    run = results()
    lines = report.capacity_lines(report.capacity(run))

    text = "\n".join(lines)
    assert "0.78 CPU at the floors' cost, 1.21 at the targets' ratios" in text
    assert "per delivery 1.00" in text
    assert "at most 714 µs CPU per push (1.79x the floor's); the gateway spent 900" in text
    assert report.capacity_lines(report.capacity({"e2e": run["e2e"]})) == []
