"""Booking versions as instants: which of two versions of one booking is older.

A source parses its PMS's version time into an aware datetime (``BookingEvent.version``); the
pipeline hands the store whole microseconds since the Unix epoch, so versions compare as numbers
and never as text (as text, ``"…:00.5Z" < "…:00Z"``: a newer version would be dropped as stale).
A store keeps what ``stored_version`` can read back: those microseconds, or the ISO timestamps
earlier releases kept.
"""

from __future__ import annotations

from datetime import UTC, datetime

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def version_micros(moment: datetime) -> int:
    """An instant as whole microseconds since the Unix epoch (a naive time is UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    since = moment - EPOCH
    # Whole numbers from the timedelta's parts: ``since // timedelta(microseconds=1)`` builds a
    # timedelta and divides two (1-3 µs against 0.5, once per booking).
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


def stored_version(value: str | int | None) -> int | None:
    """A version as a store kept it, in microseconds: an integer (or its text), or an ISO
    timestamp written before versions were instants (a naive one is UTC). None when unknown or
    unreadable, which never makes an update stale."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return version_micros(datetime.fromisoformat(text))
    except ValueError:
        return None


def is_older(version: str | int | None, than: str | int | None) -> bool:
    """True when ``version`` is known to be older than the stored ``than`` (equal is not)."""
    new, known = stored_version(version), stored_version(than)
    return new is not None and known is not None and new < known
