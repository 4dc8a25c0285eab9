"""``python -m bench --rounds N``: the durable floor and ingest run N times, alternately, and the
push targets take the median round. Pure arithmetic on results shaped as the phases write them."""

from __future__ import annotations

from typing import Any

from bench import report


def round_of(floor_cpu: float, gateway_cpu: float, floor_rps: float, gateway_rps: float) -> Any:
    return {
        "durable_floor": {"beds24": {"cpu_us_per_push": floor_cpu, "rps": floor_rps}},
        "ingest": {"beds24": {"cpu_us_per_push": gateway_cpu, "rps": gateway_rps}},
    }


ROUNDS = [
    round_of(400.0, 880.0, 2000.0, 1100.0),  # 2.2x, 0.55x
    round_of(450.0, 810.0, 2000.0, 1300.0),  # 1.8x, 0.65x
    round_of(420.0, 840.0, 2100.0, 1050.0),  # 2.0x, 0.50x
]


def test_the_median_round_by_cpu_ratio_is_the_runs_and_every_ratio_is_kept() -> None:
    median = report.median_rounds(ROUNDS)

    assert median["durable_floor"]["beds24"]["cpu_us_per_push"] == 420.0
    assert median["ingest"]["beds24"]["cpu_us_per_push"] == 840.0
    ratios = median["ratios"]["beds24"]
    assert [round(r, 3) for r in ratios["cpu"]] == [2.2, 1.8, 2.0]
    assert ratios["median_cpu"] == 2.0
    # The rate's median is its own: 0.55x, from the first round.
    assert ratios["median_rps"] == 0.55


def test_an_even_count_takes_the_lower_middle_round_never_an_average() -> None:
    ratios = report.median_rounds(ROUNDS[:2])["ratios"]["beds24"]

    assert round(ratios["median_cpu"], 3) == 1.8
    assert ratios["median_rps"] == 0.55


def test_targets_check_the_medians_and_say_so() -> None:
    median = report.median_rounds(ROUNDS)
    results = {"durable_floor": median.pop("durable_floor"), "ingest": median.pop("ingest")}
    results["rounds"] = median

    named = {t["name"]: t for t in report.targets(results)}

    cpu = named["CPU per push, beds24 / durable floor, median of 3 rounds"]
    assert cpu["value"] == 2.0 and cpu["pass"] is True
    rate = named["ingest beds24 req/s / durable floor, median of 3 rounds"]
    assert rate["value"] == 0.55 and rate["pass"] is False
    [(label, source, line)] = report.round_rows(results)
    assert (label, source) == ("ingest, 3 rounds", "beds24")
    assert "CPU per push 2.20 / 1.80 / 2.00 (median 2.00" in line
    assert "req/s 0.55 / 0.65 / 0.50 (median 0.55)" in line


def test_one_round_checks_that_rounds_own_ratios() -> None:
    results = ROUNDS[0]

    named = {t["name"]: t for t in report.targets(results)}

    assert named["CPU per push, beds24 / durable floor"]["value"] == 2.2
