"""Versions of one booking arriving out of order, as a reseller receives them: what it ends up
holding is the PMS's newest version, whatever order the PMS delivered them in.

Built from the Beds24 version 2 sample (beds24-v2-booking-1.json: a confirmed booking whose
``cancelTime`` is null) through a running gateway with a real store and a receiver.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.fake_pms import Harness
from tests.octo_schema import load_fixture, validate_octo

# Both stores: the SQLite file and a PostgreSQL database.
pytestmark = pytest.mark.both_stores


def beds24_item(**fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = copy.deepcopy(load_fixture("beds24-v2-booking-1.json")[0])
    item["booking"].update(fields)
    return item


async def push_processed(gw: Harness, body: Any) -> None:
    answer = await gw.push_ok("beds24", body)
    await gw.wait_state(answer["id"], "processed")
    await gw.settled()


def received(gw: Harness) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = gw.bookings.bodies("booking_update")
    for body in bodies:
        validate_octo("Booking", body["booking"])
    return bodies


async def test_an_older_version_after_a_newer_one_that_changed_nothing_is_not_sent(
    gw: Harness,
) -> None:
    await push_processed(gw, beds24_item(modifiedTime="2026-02-15T10:00:00Z", numAdult=2))
    # The newest version changes nothing a reseller sees: nothing is sent for it...
    await push_processed(gw, beds24_item(modifiedTime="2026-02-15T10:05:00Z", numAdult=2))
    # ...but it is still the newest: a version from between the two, delivered late, is stale.
    await push_processed(gw, beds24_item(modifiedTime="2026-02-15T10:02:00Z", numAdult=3))

    bookings = [body["booking"] for body in received(gw)]
    assert len(bookings) == 1
    assert len(bookings[-1]["unitItems"]) == 2
    response = await gw.client.get(
        f"/octo/bookings/{bookings[0]['uuid']}",
        headers={"Authorization": "Bearer key-a-0123456789"},
    )
    assert response.status == 200
    assert await response.json() == bookings[-1]


async def test_a_cancelled_booking_keeps_its_cancellation_time_without_cancel_time(
    gw: Harness,
) -> None:
    # The sample's cancelTime is null: the cancellation is dated by the version that cancelled.
    await push_processed(gw, beds24_item(modifiedTime="2026-02-15T10:00:00Z"))
    await push_processed(gw, beds24_item(modifiedTime="2026-02-15T10:05:00Z", status="cancelled"))
    # Later versions of the cancelled booking: one changes the notes, one only its modifiedTime.
    await push_processed(
        gw, beds24_item(modifiedTime="2026-02-15T10:06:00Z", status="cancelled", comments="late")
    )
    await push_processed(
        gw, beds24_item(modifiedTime="2026-02-15T10:07:00Z", status="cancelled", comments="late")
    )

    bodies = received(gw)
    assert [body["booking"]["status"] for body in bodies] == ["CONFIRMED", "CANCELLED", "CANCELLED"]
    for body in bodies[1:]:
        assert body["booking"]["cancellation"]["utcCancelledAt"] == "2026-02-15T10:05:00Z"
    assert [entry["path"] for entry in bodies[2]["diff"]] == ["/notes"]
