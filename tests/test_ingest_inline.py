"""Self-contained pushes (Beds24 version 2, Channex ARI and events without an OCTO event) are
processed in their ingest request and stored, events and deliveries included, in the one
transaction that stores them; every promise of the usual path holds (CONTRACT §3)."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import pytest

from gateway.app import create_app
from gateway.appkeys import store_key
from gateway.config import SourceConfig
from gateway.hookspecs import hookimpl
from gateway.models import MappedRoom, RoomMap
from gateway.plugins import make_plugin_manager
from gateway.sources import (
    AcceptedPush,
    IncomingPush,
    Outcome,
    PushRejected,
    RetryLater,
    SourceContext,
    StoredPush,
)
from tests.conftest import AUTH_A, AUTH_ADMIN
from tests.fake_pms import (
    FakePMS,
    Gateways,
    Harness,
    beds24_booking,
    eventually,
    execute_sql,
)
from tests.octo_schema import load_fixture

pytestmark = pytest.mark.both_stores

BOOKING = 82279106  # beds24-v2-booking-1.json and beds24-booking-get-1.json


def v2_push(booking: int = BOOKING, modified: str = "2026-02-15T10:07:22Z") -> list[Any]:
    push: list[Any] = copy.deepcopy(load_fixture("beds24-v2-booking-1.json"))
    push[0]["booking"].update(id=booking, modifiedTime=modified)
    return push


def deliveries(gw: Harness, push_id: str) -> int:
    return gw.count(
        "select count(*) from deliveries d join events e on e.seq = d.event_seq"
        " where e.push_id = ?",
        [push_id],
    )


# -- processed in the transaction that stores it ---------------------------------------------------


@pytest.mark.parametrize(
    ("source", "body", "event"),
    [
        ("beds24", v2_push(), "booking_update"),
        ("channex", load_fixture("channex-ari-1.json"), "availability_update"),
    ],
)
async def test_the_200_comes_with_the_push_processed_and_its_deliveries_stored(
    gw: Harness, source: str, body: Any, event: str
) -> None:
    answer = await gw.push_ok(source, body)
    # Nothing waited for: the answer came after the one transaction that stored it all.
    assert (answer["state"], answer["duplicate"]) == ("processed", False)
    push = await gw.admin_push(answer["id"])
    assert (push["state"], push["attempts"], push["error"]) == ("processed", 1, None)
    assert push["note"]
    assert gw.events(event) >= 1
    assert deliveries(gw, answer["id"]) == gw.events(event)
    listed = await gw.client.get("/admin/pushes?state=processed", headers=AUTH_ADMIN)
    assert answer["id"] in {p["id"] for p in await listed.json()}
    # What operators see: the push counted as stored, and as processed in the console's counts.
    metrics = await (await gw.client.get("/metrics")).text()
    assert f'gateway_pushes_total{{result="stored",source="{source}"}} 1.0' in metrics
    assert await gw.client.app[store_key].push_counts() == {"processed": 1}
    receiver = gw.bookings if event == "booking_update" else gw.availability
    await eventually(lambda: receiver.bodies(event))
    await gw.settled()


async def test_a_retried_push_is_recognised_and_not_sent_twice(gw: Harness) -> None:
    first = await gw.push_ok("beds24", v2_push())
    again = await asyncio.gather(*(gw.push_ok("beds24", v2_push()) for _ in range(4)))
    assert {(a["id"], a["duplicate"]) for a in again} == {(first["id"], True)}
    ari = load_fixture("channex-ari-1.json")
    ari_first = await gw.push_ok("channex", ari)
    ari_again = await gw.push_ok("channex", ari)
    assert (ari_again["id"], ari_again["duplicate"]) == (ari_first["id"], True)
    await gw.settled()
    assert gw.count("select count(*) from pushes") == 2
    assert len(gw.bookings.bookings()) == 1
    assert gw.events("booking_update") == 1
    assert len(gw.availability.availability()) == gw.events("availability_update") == 1


async def test_a_push_behind_an_unfinished_one_of_its_booking_waits_its_turn(gw: Harness) -> None:
    # Version 1 reads the booking from the API, which hangs: that push stays unfinished.
    gw.pms.beds24_bookings[str(BOOKING)] = beds24_booking(
        id=BOOKING, modifiedTime="2026-02-15T10:00:00Z", comments="first"
    )
    gw.pms.hang()
    await gw.push_ok("beds24", method="GET", params={"bookid": str(BOOKING)})
    await eventually(lambda: gw.pms.calls("/bookings"))
    later = v2_push(modified="2026-02-15T11:00:00Z")
    later[0]["booking"]["comments"] = "second"
    second = await gw.push_ok("beds24", later)
    assert second["state"] == "accepted"
    assert gw.events() == 0
    other = await gw.push_ok("beds24", v2_push(booking=BOOKING + 1))
    assert other["state"] == "processed"  # another booking does not wait
    gw.pms.release()
    await gw.wait_state(second["id"], "processed")
    await gw.settled()
    mine = [b for b in gw.bookings.bookings() if b["supplierReference"] == str(BOOKING)]
    assert [b["notes"] for b in mine] == ["first", "second"]


async def test_an_unparseable_booking_fails_visibly_as_before(gw: Harness) -> None:
    body = v2_push()
    body[0]["booking"]["status"] = "no such status"
    answer = await gw.push_ok("beds24", body)
    assert answer["state"] == "accepted"  # stored to be processed as any push
    push = await gw.wait_state(answer["id"], "failed")
    assert "cannot translate" in push["error"] and "no such status" in push["error"]
    assert push["attempts"] == 1
    assert gw.events() == 0


async def test_a_disabled_subscription_gets_no_message(gw: Harness) -> None:
    listed = await gw.client.get("/octo/webhooks", headers=AUTH_A)
    for webhook in await listed.json():
        if webhook["event"] == "booking_update":
            patched = await gw.client.patch(
                f"/octo/webhooks/{webhook['id']}", json={"active": False}, headers=AUTH_A
            )
            assert patched.status == 200, await patched.text()
    answer = await gw.push_ok("beds24", v2_push())
    assert answer["state"] == "processed"
    assert gw.events("booking_update") == 1 and deliveries(gw, answer["id"]) == 0


async def test_without_workers_a_push_is_only_stored(gateways: Gateways) -> None:
    gw = await gateways.start(subscribe=False)
    app = create_app(gw.config, workers=False)
    client = await gateways.aiohttp_client(app)
    plain = Harness(client=client, pms=gw.pms, config=gw.config)
    answer = await plain.push_ok("beds24", v2_push(booking=BOOKING + 7))
    assert answer["state"] == "accepted"


# -- a source's own self-contained kinds: failures go the usual way --------------------------------


class Flaky:
    """A self-contained source whose ``process`` does what each push's payload says: fail in
    some way a number of times, or wait for the test, then keep a room map and send a booking."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.reading: dict[str, asyncio.Event] = {}
        self.seen: dict[str, list[list[str]]] = {}  # per call: who kept the rooms of the map read

    def check_settings(self, settings: Any) -> None:
        return None

    def accept(self, push: IncomingPush) -> AcceptedPush:
        return AcceptedPush(kind="flaky", payload=json.loads(push.body), self_contained=True)

    async def process(self, push: StoredPush, context: SourceContext) -> Outcome:
        doc = push.payload
        name = doc["name"]
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] <= doc.get("fail", 0):
            errors: dict[str, Exception] = {
                "retry": RetryLater("the PMS is down"),
                "reject": PushRejected("never"),
                "bug": ValueError("a bug"),
            }
            raise errors[doc["how"]]
        known = await context.room_map("b1") if doc.get("map") else None
        if doc.get("map"):
            rooms_read = [room.details["by"] for room in known.rooms] if known else []
            self.seen.setdefault(name, []).append(rooms_read)
        if name in self.gates and self.calls[name] == 1:
            self.reading[name].set()
            await self.gates[name].wait()
        if doc.get("map"):
            slot = len(known.rooms) if known is not None else 0
            rooms = [*(known.rooms if known else []), MappedRoom(slot=slot, details={"by": name})]
            context.keep_room_map("b1", RoomMap(rooms=rooms))
        return Outcome(note=f"{name}: call {self.calls[name]}")

    async def acknowledge(self, outcome: Outcome, context: Any) -> None:
        return None


async def flaky_gateway(gateways: Gateways, source: Flaky) -> Harness:
    class Plugin:
        @hookimpl
        def register_sources(self, register: Any) -> None:
            register(source)

    pms = FakePMS()  # not started: the flaky source reads no API
    gateways.pms_servers.append(pms)
    config = gateways.config(pms)
    config.sources["flaky"] = SourceConfig(token="flaky-token")
    pm = make_plugin_manager(config.plugins.dir)
    pm.register(Plugin())
    client = await gateways.aiohttp_client(create_app(config, pm=pm))
    return Harness(client=client, pms=pms, config=config)


async def push_flaky(gw: Harness, doc: dict[str, Any]) -> dict[str, Any]:
    return await gw.push_ok("flaky", doc, token="flaky-token")


@pytest.mark.parametrize(
    ("how", "state", "error"),
    [("retry", "processed", None), ("reject", "failed", "never"), ("bug", "failed", "a bug")],
)
async def test_a_source_failing_at_ingest_is_stored_and_recorded_as_always(
    gateways: Gateways, how: str, state: str, error: str | None
) -> None:
    source = Flaky()
    gw = await flaky_gateway(gateways, source)
    # Fails at ingest and once more in the processor (a retry is then processed).
    answer = await push_flaky(gw, {"name": how, "how": how, "fail": 2})
    assert answer["state"] == "accepted"
    push = await gw.wait_state(answer["id"], state)
    if error is None:
        assert push["error"] is None and push["attempts"] == 2
        assert push["note"] == f"{how}: call 3"
    else:
        assert error in push["error"] and push["attempts"] == 1
    assert source.calls[how] == (3 if how == "retry" else 2)


async def test_a_source_not_self_contained_is_processed_after_the_answer(
    gateways: Gateways,
) -> None:
    class Plain(Flaky):
        def accept(self, push: IncomingPush) -> AcceptedPush:
            accepted = super().accept(push)
            return AcceptedPush(kind=accepted.kind, payload=accepted.payload)

    gw = await flaky_gateway(gateways, Plain())
    answer = await push_flaky(gw, {"name": "plain"})
    assert answer["state"] == "accepted"
    await gw.wait_state(answer["id"], "processed")


async def test_a_room_map_that_moved_on_meanwhile_sends_the_push_the_usual_way(
    gateways: Gateways,
) -> None:
    source = Flaky()
    source.gates["slow"] = asyncio.Event()
    source.reading["slow"] = asyncio.Event()
    gw = await flaky_gateway(gateways, source)
    # The map needs booking state, else the gateway's first maintenance round (whenever a loaded
    # machine gets to it) deletes it as an orphan.
    execute_sql(
        gw.config.storage.url or gw.config.storage.path,
        "insert into booking_state (key, booking, updated_at) values ('flaky:b1', '{}', ?)",
        [time.time()],
    )
    slow = asyncio.create_task(push_flaky(gw, {"name": "slow", "map": True}))
    await source.reading["slow"].wait()  # it read the map (none yet) and waits
    fast = await push_flaky(gw, {"name": "fast", "map": True})
    assert fast["state"] == "processed"
    source.gates["slow"].set()
    answer = await slow
    assert answer["state"] == "accepted"  # its map moved on: nothing of it was stored then
    await gw.wait_state(answer["id"], "processed")
    # Processed again after the answer, from the map the other push kept.
    assert source.seen["slow"] == [[], ["fast"]]
    found = await gw.client.app[store_key].get_room_map("flaky", "b1")
    assert found is not None
    rooms, generation = found
    assert [room.details["by"] for room in rooms.rooms] == ["fast", "slow"]
    assert generation == 2


class Acknowledging(Flaky):
    """Lists the ids a push names for acknowledgement, and records what it is handed."""

    def __init__(self, only_listed: bool | None, self_contained: bool) -> None:
        super().__init__()
        if only_listed is not None:
            self.acknowledge_only_listed = only_listed
        self.self_contained = self_contained
        self.acknowledged: list[list[str]] = []
        self.got_ids = asyncio.Event()

    def accept(self, push: IncomingPush) -> AcceptedPush:
        accepted = super().accept(push)
        return AcceptedPush(accepted.kind, accepted.payload, self_contained=self.self_contained)

    async def process(self, push: StoredPush, context: SourceContext) -> Outcome:
        outcome = await super().process(push, context)
        outcome.acknowledge = list(push.payload.get("ack", []))
        return outcome

    async def acknowledge(self, outcome: Outcome, context: Any) -> None:
        self.acknowledged.append(outcome.acknowledge)
        if outcome.acknowledge:
            self.got_ids.set()


@pytest.mark.parametrize("self_contained", [True, False])
@pytest.mark.parametrize(
    ("only_listed", "acknowledged"),
    [
        (None, [[], ["r1"]]),  # a source that does not say: every outcome, as always
        (False, [[], ["r1"]]),
        (True, [["r1"]]),  # only outcomes that list ids: no task for the one listing none
    ],
)
async def test_acknowledge_is_skipped_only_for_a_source_that_acknowledges_only_listed_ids(
    gateways: Gateways,
    only_listed: bool | None,
    acknowledged: list[list[str]],
    self_contained: bool,
) -> None:
    source = Acknowledging(only_listed, self_contained)
    gw = await flaky_gateway(gateways, source)
    first = await push_flaky(gw, {"name": "nothing"})
    await gw.wait_state(first["id"], "processed")
    second = await push_flaky(gw, {"name": "ids", "ack": ["r1"]})
    await gw.wait_state(second["id"], "processed")
    # Each acknowledgement runs without a pause once its push is stored, the first's long before
    # the second push is even accepted: once the second's is in, the first's (if any) is too.
    await asyncio.wait_for(source.got_ids.wait(), 30)
    assert source.acknowledged == acknowledged
