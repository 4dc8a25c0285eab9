"""Booking versions compare as instants (gateway.pipeline.versions and the sources' parsing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.octo import BookingEvent
from gateway.pipeline.versions import is_older, stored_version, version_micros
from gateway.samples import sample_data
from gateway.sources.translation import TranslationError, utc_instant


def test_fractional_seconds_are_newer_not_older() -> None:
    whole = version_micros(utc_instant("2026-02-15T12:00:00Z", "v"))
    half = version_micros(utc_instant("2026-02-15T12:00:00.5Z", "v"))

    assert "2026-02-15T12:00:00.5Z" < "2026-02-15T12:00:00Z"  # what comparing text got wrong
    assert half - whole == 500_000
    assert is_older(whole, half)
    assert not is_older(half, whole)
    assert not is_older(half, half)


def test_offsets_and_naive_times_are_the_same_instant() -> None:
    naive = utc_instant("2020-11-12T11:39:50.111087", "inserted_at")
    zulu = utc_instant("2020-11-12T11:39:50.111087Z", "inserted_at")
    berlin = utc_instant("2020-11-12T12:39:50.111087+01:00", "inserted_at")
    spaced = utc_instant("2020-11-12 11:39:50.111087", "inserted_at")

    assert naive == zulu == berlin == spaced
    assert naive.tzinfo is UTC
    with pytest.raises(TranslationError, match="inserted_at: not a timestamp"):
        utc_instant("yesterday", "inserted_at")


def test_stored_versions_of_every_release_read_back() -> None:
    moment = datetime(2026, 2, 15, 12, 0, 0, 500_000, tzinfo=UTC)
    micros = version_micros(moment)

    assert stored_version(micros) == micros
    assert stored_version(str(micros)) == micros  # an integer read back from a text column
    assert stored_version("2026-02-15T12:00:00.5Z") == micros  # an earlier release's text
    assert stored_version("2026-02-15T12:00:00.500000") == micros
    assert stored_version("2026-02-15T13:00:00.5+01:00") == micros
    assert stored_version("garbage") is None
    assert stored_version(None) is None
    assert not is_older(micros, "garbage")
    assert not is_older(None, micros)


def test_booking_event_version_is_an_instant() -> None:
    booking = sample_data("booking_update")["booking"]
    from_text = BookingEvent.model_validate(
        {"booking": booking, "bookingKey": "s:1", "version": "2026-02-15T12:00:00.5"}
    )
    aware = BookingEvent.model_validate(
        {
            "booking": booking,
            "bookingKey": "s:1",
            "version": datetime(
                2026, 2, 15, 13, 0, 0, 500_000, tzinfo=timezone(timedelta(hours=1))
            ),
        }
    )

    assert from_text.version is not None and aware.version is not None
    assert from_text.version.tzinfo is not None  # a naive version is UTC
    assert version_micros(from_text.version) == version_micros(aware.version)


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(None)
    ),
    offset=st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_version_micros_counts_every_microsecond_since_the_epoch(
    moment: datetime, offset: int
) -> None:
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset)))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    assert version_micros(aware) == (aware - epoch) // timedelta(microseconds=1)
    assert version_micros(moment) == (moment.replace(tzinfo=UTC) - epoch) // timedelta(
        microseconds=1
    )
