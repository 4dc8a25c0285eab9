"""Room maps are stored with the events they produced, or not at all, and never from a stale read."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.hookspecs import hookimpl
from gateway.models import MappedRoom, NewEvent, RoomMap, RoomMapUpdate
from gateway.plugins import make_plugin_manager
from gateway.samples import sample_data
from gateway.sources import AcceptedPush, IncomingPush, Outcome, SourceContext, StoredPush
from gateway.store import SQLiteStore
from gateway.store.interface import RoomMapConflict
from tests.conftest import AUTH_ADMIN
from tests.fake_pms import eventually, execute_sql


def one_room(tag: str, slot: int = 0) -> RoomMap:
    return RoomMap(
        rooms=[MappedRoom(slot=slot, details={"tag": tag})], created_at="2020-01-01T00:00:00Z"
    )


def booking_event(note: str) -> NewEvent:
    booking = sample_data("booking_update")["booking"]
    return NewEvent(
        event="booking_update",
        subject="s:b1:0",
        product_id=booking["productId"],
        option_id=booking["optionId"],
        data={"booking": {**booking, "notes": note}},
        state_key="s:b1:0",
        revision=note,
    )


async def leased_push(store: SQLiteStore) -> tuple[str, str]:
    await store.insert_push(source="s", kind="k", payload={}, dedupe_key=None, order_key=None)
    [push] = await store.claim_pushes(1, 60)
    assert push.lease_token is not None
    return push.id, push.lease_token


def count(path: Path, sql: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


async def test_a_room_map_is_stored_with_the_events_and_fenced_by_its_generation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "maps.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.get_room_map("s", "b1") is None
        push_id, token = await leased_push(store)
        update = RoomMapUpdate(source="s", booking="b1", rooms=one_room("first"), generation=0)
        await store.complete_push(push_id, token, [booking_event("1")], room_maps=[update])
        assert await store.get_room_map("s", "b1") == (one_room("first"), 1)
        assert await store.get_room_map("other", "b1") is None

        # A push that read the map before that write: nothing of it is stored.
        push_id, token = await leased_push(store)
        stale = RoomMapUpdate(source="s", booking="b1", rooms=one_room("stale"), generation=0)
        with pytest.raises(RoomMapConflict, match="b1"):
            await store.complete_push(push_id, token, [booking_event("2")], room_maps=[stale])
        assert await store.get_room_map("s", "b1") == (one_room("first"), 1)
        assert count(path, "select count(*) from events") == 1
        push = await store.get_push(push_id)
        assert push is not None and (push.state, push.lease_token) == ("accepted", token)

        # The same push, having read the map again, goes through.
        fresh = RoomMapUpdate(source="s", booking="b1", rooms=one_room("second"), generation=1)
        await store.complete_push(push_id, token, [booking_event("2")], room_maps=[fresh])
        assert await store.get_room_map("s", "b1") == (one_room("second"), 2)
        assert count(path, "select count(*) from events") == 2
    finally:
        await store.close()


async def test_a_push_that_lost_its_lease_stores_no_room_map(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "lease.db")
    await store.open()
    try:
        push_id, _ = await leased_push(store)
        update = RoomMapUpdate(source="s", booking="b1", rooms=one_room("x"), generation=0)
        created = await store.complete_push(
            push_id, "somebody-elses-lease", [booking_event("1")], room_maps=[update]
        )
        assert created is None
        assert await store.get_room_map("s", "b1") is None
    finally:
        await store.close()


class MapSource:
    """Adds one room per push to booking "b"; a push asking to ``wait`` holds between reading
    the map and returning, so another push can store the map meanwhile."""

    name = "mapper"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()
        self.seen: list[tuple[str, list[str]]] = []

    def check_settings(self, settings: Any) -> None:
        return None

    def accept(self, push: IncomingPush) -> AcceptedPush:
        tag = push.query["tag"]
        return AcceptedPush(kind="room", payload={"tag": tag, "wait": "wait" in push.query})

    async def process(self, push: StoredPush, context: SourceContext) -> Outcome:
        known = await context.room_map("b") or RoomMap()
        self.seen.append((push.payload["tag"], [room.details["tag"] for room in known.rooms]))
        if push.payload["wait"] and not self.gate.is_set():
            self.reading.set()
            await self.gate.wait()
        room = MappedRoom(slot=known.next_slot(), details={"tag": push.payload["tag"]})
        context.keep_room_map("b", RoomMap(rooms=[*known.rooms, room]))
        return Outcome(note=f"room {room.slot}")

    async def acknowledge(self, outcome: Outcome, context: Any) -> None:
        return None


async def test_a_push_that_read_a_map_another_push_changed_is_processed_again(
    aiohttp_client: Any, make_config: Any
) -> None:
    source = MapSource()

    class Plugin:
        @hookimpl
        def register_sources(self, register: Any) -> None:
            register(source)

    pm = make_plugin_manager(None)
    pm.register(Plugin())
    config = make_config(
        sources={"mapper": {"token": "t"}}, ingest={"retry_base": 0.05, "poll_interval": 0.05}
    )
    client = await aiohttp_client(create_app(config, pm=pm))
    store = SQLiteStore(config.storage.path)
    # This source keeps a map without booking state (it sends no events): the gateway's first
    # maintenance round, running whenever a loaded machine gets to it, deletes such a map as an
    # orphan. Booking state with no stay makes the map one that is kept.
    execute_sql(
        config.storage.path,
        "insert into booking_state (key, booking, updated_at) values ('mapper:b', '{}', ?)",
        [time.time()],
    )

    async def push(**query: str) -> str:
        response = await client.post(
            "/ingest/mapper", params=query, data=b"{}", headers={"X-Gateway-Token": "t"}
        )
        assert response.status == 200, await response.text()
        push_id: str = (await response.json())["id"]
        return push_id

    async def state(push_id: str) -> dict[str, Any]:
        answer = await client.get(f"/admin/pushes/{push_id}", headers=AUTH_ADMIN)
        body: dict[str, Any] = await answer.json()
        return body

    slow = await push(tag="slow", wait="1")
    await asyncio.wait_for(source.reading.wait(), 10)  # it has read the map: none yet
    fast = await push(tag="fast")
    await eventually(lambda: _processed(state, fast))
    source.gate.set()
    await eventually(lambda: _processed(state, slow))

    await store.open()
    try:
        found = await store.get_room_map("mapper", "b")
    finally:
        await store.close()
    assert found is not None
    rooms, generation = found
    # Both rooms kept, each in a slot of its own: the slow push read the map again.
    assert [(room.slot, room.details["tag"]) for room in rooms.rooms] == [(0, "fast"), (1, "slow")]
    assert generation == 2
    assert source.seen == [("slow", []), ("fast", []), ("slow", ["fast"])]
    assert (await state(slow))["note"] == "room 1"


async def _processed(state: Any, push_id: str) -> bool:
    body = await state(push_id)
    return bool(body["state"] == "processed")
