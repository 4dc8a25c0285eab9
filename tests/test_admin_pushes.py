"""/admin/pushes: operators look at stored pushes and replay them (CONTRACT §4, admin)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AUTH_A, AUTH_ADMIN, AUTH_B
from tests.fake_pms import REV_1, Harness, booking_push, eventually
from tests.octo_schema import load_fixture, validate_octo


async def expect_error(response: Any, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"] == code
    assert body["errorMessage"]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "UNAUTHORIZED"),
        ({"Authorization": "Bearer not-a-key-at-all"}, 401, "UNAUTHORIZED"),
        ({"Authorization": "Basic a2V5LWEtMDEyMzQ1Njc4OQ=="}, 401, "UNAUTHORIZED"),
        (AUTH_A, 403, "FORBIDDEN"),
        (AUTH_B, 403, "FORBIDDEN"),
    ],
)
async def test_admin_endpoints_need_an_admin_key(
    gw: Harness, headers: dict[str, str], status: int, code: str
) -> None:
    answer = await gw.push_ok("channex", load_fixture("channex-message-1.json"))
    await gw.wait_state(answer["id"], "processed")
    for method, path in (
        ("GET", f"/admin/pushes/{answer['id']}"),
        ("POST", f"/admin/pushes/{answer['id']}/replay"),
        ("GET", "/admin/pushes"),
        ("GET", "/admin/pushes/psh_unknown"),
    ):
        response = await gw.client.request(method, path, headers=headers)
        await expect_error(response, status, code)
    # A refused replay changed nothing.
    push = await gw.admin_push(answer["id"])
    assert (push["state"], push["attempts"]) == ("processed", 1)


async def test_unknown_push_is_404(gw: Harness) -> None:
    for method, path in (
        ("GET", "/admin/pushes/psh_unknown"),
        ("POST", "/admin/pushes/psh_unknown/replay"),
    ):
        response = await gw.client.request(method, path, headers=AUTH_ADMIN)
        await expect_error(response, 404, "NOT_FOUND")


async def test_get_shows_a_processed_push(gw: Harness) -> None:
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    answer = await gw.push_ok("channex", booking_push())
    push = await gw.wait_state(answer["id"], "processed")
    assert push["id"] == answer["id"]
    assert (push["source"], push["kind"], push["error"]) == ("channex", "booking", None)
    assert push["attempts"] == 1
    assert push["receivedAt"].endswith("Z")
    assert push["processedAt"].endswith("Z")
    assert push["nextAttemptAt"] is None
    assert push["note"]
    assert push["payload"]["payload"]["revision_id"] == REV_1


async def test_list_filters_by_state(gw: Harness) -> None:
    ok = await gw.push_ok("channex", load_fixture("channex-message-1.json"))
    bad = await gw.push("channex", data=b"{nope")
    assert bad.status == 400
    bad_id = (await bad.json())["id"]
    await gw.wait_state(ok["id"], "processed")

    response = await gw.client.get("/admin/pushes", headers=AUTH_ADMIN)
    assert response.status == 200
    assert {p["id"] for p in await response.json()} == {ok["id"], bad_id}
    failed = await (await gw.client.get("/admin/pushes?state=failed", headers=AUTH_ADMIN)).json()
    assert [p["id"] for p in failed] == [bad_id]
    processed = await gw.client.get(
        "/admin/pushes", params={"state": "processed"}, headers=AUTH_ADMIN
    )
    assert [p["id"] for p in await processed.json()] == [ok["id"]]
    response = await gw.client.get("/admin/pushes?state=bogus", headers=AUTH_ADMIN)
    await expect_error(response, 400, "BAD_REQUEST")


async def test_replay_after_the_cause_is_fixed_delivers(gw: Harness) -> None:
    # The revision isn't there yet: Channex answers 404, the push fails with that reason.
    answer = await gw.push_ok("channex", booking_push())
    failed = await gw.wait_state(answer["id"], "failed")
    assert "404" in failed["error"]
    assert gw.bookings.bookings() == []

    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    response = await gw.client.post(f"/admin/pushes/{answer['id']}/replay", headers=AUTH_ADMIN)
    assert response.status == 200
    replayed = await response.json()
    assert (replayed["id"], replayed["state"], replayed["attempts"]) == (
        answer["id"],
        "accepted",
        0,
    )

    done = await gw.wait_state(answer["id"], "processed")
    assert done["error"] is None
    [booking] = await eventually(lambda: gw.bookings.bookings())
    validate_octo("Booking", booking)
    await eventually(lambda: gw.pms.acked == [REV_1])


async def test_replaying_a_processed_push_sends_nothing_new(gw: Harness) -> None:
    gw.pms.add_revision("channex-booking-revision-1.json", REV_1)
    answer = await gw.push_ok("channex", booking_push())
    await gw.wait_state(answer["id"], "processed")
    await eventually(lambda: gw.bookings.bookings())

    response = await gw.client.post(f"/admin/pushes/{answer['id']}/replay", headers=AUTH_ADMIN)
    assert response.status == 200
    await eventually(lambda: len(gw.pms.calls(f"/booking_revisions/{REV_1}")) == 2)
    await gw.wait_state(answer["id"], "processed")
    await gw.settled()
    assert len(gw.bookings.bookings()) == 1
    assert gw.events() == 1


async def test_replay_of_a_rejected_push_parses_it_again(gw: Harness) -> None:
    response = await gw.push("beds24", data=b'[{"booking": {"id": true}}]')
    assert response.status == 400
    push_id = (await response.json())["id"]
    rejected = await gw.admin_push(push_id)
    assert (rejected["kind"], rejected["state"]) == ("rejected", "failed")
    assert rejected["payload"]["method"] == "POST"
    assert rejected["payload"]["body"]

    response = await gw.client.post(f"/admin/pushes/{push_id}/replay", headers=AUTH_ADMIN)
    assert response.status == 200

    async def failed_again() -> dict[str, Any] | None:
        push = await gw.admin_push(push_id)
        return push if push["state"] == "failed" and push["attempts"] == 1 else None

    again = await eventually(failed_again)
    assert "booking.id" in again["error"]
