"""booking_diff: JSON Pointer diff entries between two OCTO bookings."""

from __future__ import annotations

from typing import Any

from gateway.pipeline.diff import booking_diff
from gateway.sources.settings import TranslationSettings
from gateway_channex.translate import bookings_from_revision, revision_attributes
from tests.octo_schema import load_fixture


def channex_booking(name: str) -> dict[str, Any]:
    revision = revision_attributes(load_fixture(name))
    [event] = bookings_from_revision(revision, TranslationSettings())
    return event.booking.model_dump(mode="json", by_alias=True)


def test_first_update_has_an_empty_diff() -> None:
    assert booking_diff(None, {"status": "CONFIRMED"}) == []


def test_same_booking_has_an_empty_diff() -> None:
    booking = channex_booking("channex-booking-revision-2.json")

    assert booking_diff(booking, booking) == []


def test_diff_detects_a_cancellation() -> None:
    new = channex_booking("channex-booking-revision-2.json")
    cancelled = channex_booking("channex-booking-revision-4.json")

    diff = booking_diff(new, cancelled)

    assert {"op": "replace", "path": "/status", "was": "CONFIRMED", "value": "CANCELLED"} in diff
    assert {"op": "replace", "path": "/cancellable", "was": "true", "value": "false"} in diff
    assert {
        "op": "replace",
        "path": "/cancellation",
        "was": "null",
        "value": '{"refund":"PARTIAL","reason":null,"utcCancelledAt":"2020-11-12T11:39:50Z"}',
    } in diff
    assert {
        "op": "replace",
        "path": "/unitItems/1/status",
        "was": "CONFIRMED",
        "value": "CANCELLED",
    } in diff


def test_diff_detects_a_renamed_guest() -> None:
    new = channex_booking("channex-booking-revision-2.json")
    modified = channex_booking("channex-booking-revision-3.json")

    assert booking_diff(new, modified) == [
        {
            "op": "replace",
            "path": "/contact/fullName",
            "was": "Name Surname",
            "value": "New Customer Name New Customer Surname",
        },
        {
            "op": "replace",
            "path": "/contact/firstName",
            "was": "Name",
            "value": "New Customer Name",
        },
        {
            "op": "replace",
            "path": "/contact/lastName",
            "was": "Surname",
            "value": "New Customer Surname",
        },
    ]


def test_diff_ignores_utc_updated_at() -> None:
    assert (
        booking_diff({"utcUpdatedAt": "a", "notes": None}, {"utcUpdatedAt": "b", "notes": None})
        == []
    )


def test_lists_compare_by_index_adding_at_the_end_and_removing_from_the_last() -> None:
    two = {"unitItems": [{"unitId": "adult"}, {"unitId": "child"}]}
    four = {"unitItems": [{"unitId": "adult"}, {"unitId": "adult"}, {"unitId": "infant"}, 1]}

    assert booking_diff(two, four) == [
        {"op": "replace", "path": "/unitItems/1/unitId", "was": "child", "value": "adult"},
        {"op": "add", "path": "/unitItems/2", "was": "null", "value": '{"unitId":"infant"}'},
        {"op": "add", "path": "/unitItems/3", "was": "null", "value": "1"},
    ]
    assert [entry["path"] for entry in booking_diff(four, two)][1:] == [
        "/unitItems/3",
        "/unitItems/2",
    ]


def test_added_and_removed_keys_and_escaped_pointers() -> None:
    diff = booking_diff({"a/b": 1, "gone": True}, {"a/b": 1.5, "c~d": None})

    assert diff == [
        {"op": "replace", "path": "/a~1b", "was": "1", "value": "1.5"},
        {"op": "remove", "path": "/gone", "was": "true", "value": "null"},
        {"op": "add", "path": "/c~0d", "was": "null", "value": "null"},
    ]


def test_a_type_change_is_a_change() -> None:
    assert booking_diff({"x": 1}, {"x": True}) == [
        {"op": "replace", "path": "/x", "was": "1", "value": "true"}
    ]


def test_every_entry_is_a_ventrata_diff() -> None:
    new = channex_booking("channex-booking-revision-5.json")
    cancelled = channex_booking("channex-booking-revision-6.json")

    diff = booking_diff(new, cancelled)

    assert diff
    for entry in diff:
        assert set(entry) == {"op", "path", "was", "value"}
        assert entry["op"] in {"add", "remove", "replace"}
        assert all(isinstance(value, str) for value in entry.values())
        assert entry["path"].startswith("/")
