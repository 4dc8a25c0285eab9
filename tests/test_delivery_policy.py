"""The retry policy as pure functions: classify, retry_delay, parse_retry_after."""

from __future__ import annotations

import base64
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from gateway.delivery.worker import classify, parse_retry_after, retry_delay, split_credentials

SCHEDULE = [5.0, 300.0, 1800.0]


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
@pytest.mark.parametrize("retry_on_error", [True, False])
def test_2xx_is_delivered(status: int, retry_on_error: bool) -> None:
    assert classify(status, retry_on_error) == "delivered"


@pytest.mark.parametrize("retry_on_error", [True, False])
def test_410_is_gone(retry_on_error: bool) -> None:
    assert classify(410, retry_on_error) == "gone"


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504, 599])
@pytest.mark.parametrize("retry_on_error", [True, False])
def test_timeouts_throttling_and_server_errors_are_always_retried(
    status: int | None, retry_on_error: bool
) -> None:
    assert classify(status, retry_on_error) == "retry"


@pytest.mark.parametrize("status", [100, 301, 302, 304, 400, 401, 403, 404, 409, 422])
def test_other_answers_follow_retry_on_error(status: int) -> None:
    assert classify(status, True) == "retry"
    assert classify(status, False) == "dead"


def test_delay_follows_the_schedule_with_20_percent_jitter() -> None:
    rng = random.Random(7)
    for attempt, base in enumerate(SCHEDULE, start=1):
        delays = [retry_delay(attempt, SCHEDULE, rng=rng) for _ in range(2000)]
        assert all(d is not None and 0.8 * base <= d <= 1.2 * base for d in delays)
        values = [d for d in delays if d is not None]
        # The jitter really spreads over the band, on both sides of the scheduled delay.
        assert min(values) < 0.82 * base
        assert max(values) > 1.18 * base


def test_delay_jitter_uses_the_global_random_by_default() -> None:
    delays = {retry_delay(1, SCHEDULE) for _ in range(50)}
    assert len(delays) > 1
    assert all(d is not None and 4.0 <= d <= 6.0 for d in delays)


def test_schedule_exhaustion_means_dead() -> None:
    # len(schedule) + 1 attempts in all: after the last one there is no further delay.
    assert retry_delay(len(SCHEDULE), SCHEDULE) is not None
    assert retry_delay(len(SCHEDULE) + 1, SCHEDULE) is None
    assert retry_delay(len(SCHEDULE) + 5, SCHEDULE, retry_after=1.0) is None
    assert retry_delay(1, []) is None


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        retry_delay(0, SCHEDULE)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (0.0, 300.0),  # never sooner than the schedule
        (10.0, 300.0),
        (300.0, 300.0),
        (450.0, 450.0),  # honoured between 1x and 2x
        (600.0, 600.0),
        (601.0, 600.0),  # never more than twice as late
        (86400.0, 600.0),
    ],
)
def test_retry_after_is_honoured_within_1x_to_2x(retry_after: float, expected: float) -> None:
    assert retry_delay(2, SCHEDULE, retry_after=retry_after) == expected


def test_parse_retry_after_seconds() -> None:
    now = time.time()
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after("0", now) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "  ",
        "soon",
        "-5",
        "1.5",
        "12abc",
        "Wed, 99 Foo",
        "²",
        "1٣",
        "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",  # OverflowError in email.utils
        "Mon, 01 Jan 2020 00:00:00 +99999999999999999999",
    ],
)
def test_parse_retry_after_garbage_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, time.time()) is None


def test_parse_retry_after_http_date() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert later.endswith("GMT")
    assert parse_retry_after(later, now.timestamp()) == pytest.approx(90.0)
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(earlier, now.timestamp()) == 0.0


def test_parse_retry_after_http_date_without_zone_is_utc() -> None:
    # RFC 5322 "-0000" means UTC with no zone information; it must not be read as local time.
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    value = "Tue, 01 Jan 2030 12:01:00 -0000"
    assert parse_retry_after(value, now.timestamp()) == pytest.approx(60.0)


def test_split_credentials() -> None:
    url, auth = split_credentials("https://user:p%40ss@example.com:8443/hook?x=1")
    assert url == "https://example.com:8443/hook?x=1"
    assert auth == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert split_credentials("https://example.com/hook") == ("https://example.com/hook", None)
    _, no_password = split_credentials("https://user@example.com/hook")
    assert no_password == "Basic " + base64.b64encode(b"user:").decode()
    _, unicode = split_credentials("https://j%C3%B6rg:s%C3%A9same@example.com/")
    assert unicode == "Basic " + base64.b64encode("jörg:sésame".encode()).decode()
