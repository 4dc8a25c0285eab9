"""/ingest/{source}: sender tokens, duplicate pushes, PMS API outages and restarts (CONTRACT §3)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from tests.fake_pms import (
    BEDS24_INGEST_TOKEN,
    CHANNEX_TOKEN,
    REV_1,
    Gateways,
    Harness,
    beds24_booking,
    booking_push,
    eventually,
)
from tests.octo_schema import load_fixture, validate_octo


async def expect_octo_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body: dict[str, Any] = await response.json()
    assert body["error"] == code
    assert body["errorMessage"]
    return body


# -- tokens ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "token"),
    [("channex", None), ("channex", "wrong"), ("channex", BEDS24_INGEST_TOKEN), ("beds24", "")],
)
async def test_missing_or_wrong_token_is_refused_and_nothing_is_stored(
    gw: Harness, source: str, token: str | None
) -> None:
    response = await gw.push(source, booking_push(), token=token)
    body = await expect_octo_error(response, 401, "UNAUTHORIZED")
    assert "id" not in body
    response = await gw.push(source, booking_push(), token=None, params={"token": "nope"})
    await expect_octo_error(response, 401, "UNAUTHORIZED")
    assert gw.count("select count(*) from pushes") == 0
    assert gw.pms.requests == []


async def test_token_in_header_or_query(gw: Harness) -> None:
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    by_header = await gw.push_ok("channex", booking_push())
    by_query = await gw.push_ok(
        "channex", booking_push("other"), token=None, params={"token": CHANNEX_TOKEN}
    )
    assert by_header["id"] != by_query["id"]
    stored = await gw.admin_push(by_query["id"])
    assert CHANNEX_TOKEN not in str(stored)


async def test_the_answer_is_json_in_utf_8(gw: Harness) -> None:
    response = await gw.push("channex", load_fixture("channex-ari-1.json"))

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert (await response.json())["kind"] == "ari"


async def test_unknown_source_is_404(gw: Harness) -> None:
    for method in ("GET", "POST"):
        response = await gw.client.request(
            method, "/ingest/nosuch", params={"token": CHANNEX_TOKEN}, data=b"{}"
        )
        await expect_octo_error(response, 404, "NOT_FOUND")
    assert gw.count("select count(*) from pushes") == 0


# -- duplicates ------------------------------------------------------------------------------------


async def test_identical_push_twice_is_one_push_processed_once(gw: Harness) -> None:
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    first = await gw.push_ok("channex", booking_push())
    second = await gw.push_ok("channex", booking_push())
    assert second["id"] == first["id"]
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    await gw.wait_state(first["id"], "processed")
    third = await gw.push_ok("channex", booking_push())  # after processing too
    assert (third["id"], third["duplicate"]) == (first["id"], True)
    await gw.settled()
    assert gw.events() == 1
    assert len(gw.bookings.bookings()) == 1
    assert len(gw.pms.calls(f"/booking_revisions/{REV_1}")) == 1
    assert gw.count("select count(*) from pushes") == 1


async def test_identical_pushes_at_once_are_stored_once(gw: Harness) -> None:
    gw.pms.beds24_bookings["82279106"] = beds24_booking()
    item = load_fixture("beds24-v2-booking-1.json")[0]
    answers = await asyncio.gather(*(gw.push_ok("beds24", item) for _ in range(8)))
    assert len({a["id"] for a in answers}) == 1
    assert sum(not a["duplicate"] for a in answers) == 1
    await gw.settled()
    assert gw.events() == 1
    assert len(gw.bookings.bookings()) == 1


async def test_a_burst_beyond_the_processing_slots_is_all_processed(gateways: Gateways) -> None:
    # Two slots: most pushes of the burst find none free at ingest and wait to be claimed.
    # (Version 1: the booking is read after the 200; a version 2 push is processed at ingest.)
    gw = await gateways.start(ingest={"concurrency": 2})
    ids = [str(82279106 + n) for n in range(12)]
    for booking_id in ids:
        gw.pms.beds24_bookings[booking_id] = beds24_booking(id=int(booking_id))
    answers = await asyncio.gather(
        *(gw.push_ok("beds24", method="GET", params={"bookid": b, "status": "new"}) for b in ids)
    )
    assert len({a["id"] for a in answers}) == len(ids)
    await gw.settled()
    assert gw.count("select count(*) from pushes where state = 'processed'") == len(ids)
    assert gw.events("booking_update") == len(ids)


async def test_repeated_v1_pushes_read_the_booking_and_send_it_once(gw: Harness) -> None:
    gw.pms.beds24_bookings["82279106"] = beds24_booking()
    params = {"bookid": "82279106", "status": "new"}
    first = await gw.push_ok("beds24", method="GET", params=params)
    await gw.wait_state(first["id"], "processed")
    second = await gw.push_ok("beds24", method="GET", params={**params, "status": "modify"})
    await gw.wait_state(second["id"], "processed")
    await gw.settled()
    assert len(gw.bookings.bookings()) == 1
    assert gw.events() == 1


# -- PMS API outages -------------------------------------------------------------------------------


async def test_pms_api_errors_are_retried_with_backoff_and_visible(gw: Harness) -> None:
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    gw.pms.fail(2, status=500)
    gw.pms.hang()  # the third read waits, so the state in between can be looked at
    answer = await gw.push_ok("channex", booking_push())
    await eventually(lambda: len(gw.pms.calls(f"/booking_revisions/{REV_1}")) == 3)
    push = await gw.admin_push(answer["id"])
    assert push["state"] == "accepted"
    assert "500" in push["error"]
    assert push["attempts"] == 3
    assert gw.bookings.bookings() == []

    gw.pms.release()
    done = await gw.wait_state(answer["id"], "processed")
    assert done["error"] is None
    [booking] = await eventually(lambda: gw.bookings.bookings())
    validate_octo("Booking", booking)
    await eventually(lambda: gw.pms.acked == [REV_1])


@pytest.mark.parametrize("status", [502, 503, 429, 401])
async def test_temporary_pms_answers_are_retried(gw: Harness, status: int) -> None:
    gw.pms.beds24_bookings["82279106"] = beds24_booking()
    gw.pms.fail(2, status=status)
    answer = await gw.push_ok("beds24", method="GET", params={"bookid": "82279106"})
    push = await gw.wait_state(answer["id"], "processed")
    assert push["attempts"] == 3
    await eventually(lambda: gw.bookings.bookings())


async def test_pms_api_down_then_up(gateways: Gateways) -> None:
    gw = await gateways.start(start_pms=False)
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    answer = await gw.push_ok("channex", booking_push())

    async def failed_to_connect() -> bool:
        push = await gw.admin_push(answer["id"])
        return push["state"] == "accepted" and bool(push["error"]) and push["attempts"] >= 2

    await eventually(failed_to_connect)
    push = await gw.admin_push(answer["id"])
    assert "Connect" in push["error"] or "connect" in push["error"]
    await gw.pms.start()
    await gw.wait_state(answer["id"], "processed")
    [booking] = await eventually(lambda: gw.bookings.bookings())
    validate_octo("Booking", booking)
    await eventually(lambda: gw.pms.acked == [REV_1])


async def test_inventory_outage_then_recovery(gateways: Gateways) -> None:
    gw = await gateways.start(start_pms=False)
    answer = await gw.push_ok("beds24", load_fixture("beds24-inventory-1.json"))
    await eventually(lambda: gw.count("select attempts from pushes") >= 2)
    await gw.pms.start()
    push = await gw.wait_state(answer["id"], "processed")
    assert push["error"] is None
    assert push["attempts"] >= 2


async def test_waiting_sync_room_pushes_coalesce(gateways: Gateways) -> None:
    from gateway.app import create_app

    gw = await gateways.start(subscribe=False)
    await gw.client.close()
    idle = await gateways.aiohttp_client(create_app(gw.config, workers=False))
    answers = []
    for _ in range(3):
        response = await idle.post(
            "/ingest/beds24",
            json=load_fixture("beds24-inventory-1.json"),
            headers={"X-Gateway-Token": BEDS24_INGEST_TOKEN},
        )
        assert response.status == 200
        answers.append(await response.json())
    assert len({a["id"] for a in answers}) == 1
    assert [a["duplicate"] for a in answers] == [False, True, True]
    await idle.close()

    again = await gateways.app(gw.config, gw.pms)
    await again.wait_state(answers[0]["id"], "processed")
    assert len(gw.pms.calls("/inventory/rooms/calendar")) == 1


# -- Channex acknowledgements ----------------------------------------------------------------------


async def test_channex_ack_failure_loses_nothing(gw: Harness) -> None:
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    gw.pms.ack_status = 500
    answer = await gw.push_ok("channex", booking_push())
    await gw.wait_state(answer["id"], "processed")
    [booking] = await eventually(lambda: gw.bookings.bookings())
    await eventually(lambda: gw.pms.calls(f"/booking_revisions/{REV_1}/ack", "POST"))
    assert gw.pms.acked == []

    # Channex then warns about the unacknowledged revision: read again, acknowledged, not resent.
    gw.pms.ack_status = 200
    warning = copy.deepcopy(load_fixture("channex-non-acked-booking-1.json"))
    warning["payload"]["booking_revision_id"] = REV_1
    again = await gw.push_ok("channex", warning)
    await gw.wait_state(again["id"], "processed")
    await eventually(lambda: gw.pms.acked == [REV_1])
    await gw.settled()
    assert gw.bookings.bookings() == [booking]
    assert gw.events() == 1


async def test_one_failed_ack_does_not_hold_back_the_others(gw: Harness) -> None:
    doc = load_fixture("channex-booking-2.json")
    for revision in ("rev-a", "rev-b", "rev-c"):
        gw.pms.add_revision(
            "channex-booking-revision-1.json", revision, property_id=doc["property_id"]
        )
    gw.pms.ack_failures = {"rev-a"}
    answer = await gw.push_ok("channex", doc)
    await gw.wait_state(answer["id"], "processed")
    await eventually(lambda: sorted(gw.pms.acked) == ["rev-b", "rev-c"])
    assert gw.pms.calls("/booking_revisions/rev-a/ack", "POST")


async def test_waiting_feed_pushes_coalesce(gateways: Gateways) -> None:
    from gateway.app import create_app

    gw = await gateways.start(subscribe=False)
    await gw.client.close()
    idle = await gateways.aiohttp_client(create_app(gw.config, workers=False))
    doc = load_fixture("channex-booking-2.json")
    ids = set()
    for timestamp in ("2021-12-24T00:00:00Z", "2021-12-24T00:00:05Z"):
        response = await idle.post(
            "/ingest/channex",
            json={**doc, "timestamp": timestamp},
            headers={"X-Gateway-Token": CHANNEX_TOKEN},
        )
        assert response.status == 200
        ids.add((await response.json())["id"])
    assert len(ids) == 1
    await idle.close()


# -- restarts --------------------------------------------------------------------------------------


async def test_push_survives_a_restart_mid_processing(gateways: Gateways) -> None:
    gw = await gateways.start()
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    gw.pms.hang()
    answer = await gw.push_ok("channex", booking_push())
    await eventually(lambda: gw.pms.calls(f"/booking_revisions/{REV_1}"))
    await gw.client.close()  # stops the gateway while the PMS read hangs
    assert gw.count("select count(*) from pushes where state = 'accepted'") == 1
    gw.pms.release()

    again = await gateways.app(gw.config, gw.pms)
    again.bookings = gw.bookings
    await again.wait_state(answer["id"], "processed")
    [booking] = await eventually(lambda: gw.bookings.bookings())
    validate_octo("Booking", booking)
    await eventually(lambda: gw.pms.acked == [REV_1])


async def test_push_stored_by_a_gateway_without_workers_is_processed_after_restart(
    gateways: Gateways,
) -> None:
    gw = await gateways.start(subscribe=False)
    await gw.client.close()
    from gateway.app import create_app

    idle = await gateways.aiohttp_client(create_app(gw.config, workers=False))
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    response = await idle.post(
        "/ingest/channex", json=booking_push(), headers={"X-Gateway-Token": CHANNEX_TOKEN}
    )
    assert response.status == 200
    push_id = (await response.json())["id"]
    await idle.close()
    assert gw.pms.requests == []

    again = await gateways.app(gw.config, gw.pms)
    await again.wait_state(push_id, "processed")
    assert again.events("booking_update") == 1
