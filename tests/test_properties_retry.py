"""Property tests of the retry policies (hypothesis): delivery verdicts, delays and Retry-After,
and the backoff of pushes whose PMS reads fail."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import IngestConfig
from gateway.delivery.worker import classify, parse_retry_after, retry_delay
from gateway.pipeline.processing import push_retry_delay

# No deadline: the first example pays for loading schemas and samples, and CI is shared.
PROPERTIES = settings(deadline=None, max_examples=100)
STATUSES = st.one_of(st.none(), st.integers(min_value=100, max_value=999))
SCHEDULES = st.lists(st.floats(min_value=0, max_value=10**6), max_size=12)
NOW = 1_800_000_000.0


@PROPERTIES
@given(status=STATUSES, retry_on_error=st.booleans())
def test_every_answer_gets_the_documented_verdict(status: int | None, retry_on_error: bool) -> None:
    verdict = classify(status, retry_on_error)
    if status is not None and 200 <= status < 300:
        assert verdict == "delivered"
    elif status == 410:
        assert verdict == "gone"
    elif status is None or status in (408, 429) or status >= 500:
        assert verdict == "retry"  # whatever retryOnError says
    else:
        assert verdict == ("retry" if retry_on_error else "dead")


@PROPERTIES
@given(
    schedule=SCHEDULES,
    failed=st.integers(min_value=1, max_value=20),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=10**9)),
    seed=st.integers(),
)
def test_delays_follow_the_schedule_within_jitter_and_retry_after_bounds(
    schedule: list[float], failed: int, retry_after: float | None, seed: int
) -> None:
    delay = retry_delay(failed, schedule, retry_after, random.Random(seed))
    if failed > len(schedule):
        assert delay is None  # the schedule is spent: the message is dead
        return
    base = schedule[failed - 1]
    assert delay is not None
    if retry_after is None:
        assert 0.8 * base <= delay <= 1.2 * base
    else:  # never sooner than the schedule, never more than twice as late
        assert base <= delay <= 2 * base
        assert delay == min(max(retry_after, base), 2 * base)


@PROPERTIES
@given(value=st.one_of(st.none(), st.text(max_size=60)))
def test_any_retry_after_header_is_a_delay_or_nothing(value: str | None) -> None:
    parsed = parse_retry_after(value, NOW)
    assert parsed is None or parsed >= 0
    if value is not None and value.strip().isascii() and value.strip().isdigit():
        assert parsed == float(value.strip())


@PROPERTIES
@given(
    seconds=st.integers(min_value=0, max_value=10**12),
    offset=st.integers(min_value=-86_400, max_value=10**7),
)
def test_retry_after_in_seconds_or_as_an_http_date(seconds: int, offset: int) -> None:
    assert parse_retry_after(str(seconds), NOW) == float(seconds)
    moment = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=offset)
    assert parse_retry_after(format_datetime(moment, usegmt=True), NOW) == max(float(offset), 0)


@PROPERTIES
@given(
    attempts=st.integers(min_value=0, max_value=100_000),
    base=st.floats(min_value=0.001, max_value=3600),
    ceiling=st.floats(min_value=0.001, max_value=10**6),
)
def test_push_backoff_grows_and_stays_under_its_cap(
    attempts: int, base: float, ceiling: float
) -> None:
    config = IngestConfig(retry_base=base, retry_max=ceiling)
    delay = push_retry_delay(attempts, config)
    expected = min(base * 2.0 ** min(max(attempts - 1, 0), 64), ceiling)
    assert 0.5 * expected <= delay <= expected
