"""The PostgreSQL store on a database that does not collate as C: most servers are set up with
the machine's locale (en_US.UTF-8, or an ICU one), where ``:`` and ``;`` do not sort as bytes, so a
range such as ``key > 'x:B1:' and key < 'x:B1;'`` does not find the keys that begin with ``x:B1:``
(a booking's rooms)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.models import RoomMap, RoomMapUpdate
from gateway.store.interface import ClaimRoom, Retention
from gateway.store.postgres import PostgresStore
from tests.postgres import PostgresServer
from tests.receivers import booking_event

pytestmark = pytest.mark.postgres

ROOM = ClaimRoom(total=100, per_subscription=100)


@pytest.fixture
async def store(pg_server: PostgresServer, pg_url: str) -> AsyncIterator[PostgresStore]:
    """A store on a database collating as ICU's en-US (a ``create database`` default elsewhere)."""
    opened = PostgresStore(pg_server.create_database(icu_locale="en-US"))
    await opened.open()
    yield opened
    await opened.close()


async def store_rooms(store: PostgresStore, booking: str, stay_end: str) -> None:
    """A two-room booking as a PMS plugin stores it: one event and state per room
    (``x:<booking>:<room>``) and the booking's room map."""
    push, _ = await store.insert_push(
        source="x",
        kind="booking",
        payload={"booking": booking},
        dedupe_key=booking,
        order_key=f"x:{booking}",
        lease_seconds=60,
    )
    events = [booking_event(f"x:{booking}:{room}") for room in (0, 1)]
    for event in events:
        event.data["booking"]["availability"]["localDateTimeEnd"] = f"{stay_end}T11:00:00+00:00"
    update = RoomMapUpdate(source="x", booking=booking, rooms=RoomMap(), generation=0)
    await store.complete_push(push.id, push.lease_token or "", events, room_maps=[update])


async def test_erasing_a_booking_takes_its_rooms_events_and_state(store: PostgresStore) -> None:
    from tests.test_store_shared import subscription

    await store.insert_subscription(subscription("s1"))
    await store_rooms(store, "B1", "2030-01-02")
    await store_rooms(store, "B2", "2030-01-02")
    removed = await store.erase_booking("x", "B1")
    assert removed["events"] == removed["deliveries"] == removed["booking_state"] == 2
    assert removed["room_maps"] == 1
    left = await store.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    assert sorted(d.order_key for d in left) == ["s1|x:B2:0", "s1|x:B2:1"]


async def test_retention_keeps_the_room_map_of_a_booking_whose_rooms_are_kept(
    store: PostgresStore,
) -> None:
    await store_rooms(store, "B1", "2030-01-02")  # a stay still to come: kept
    await store_rooms(store, "B2", "2020-01-02")  # a stay long over: goes, map and all
    removed = await store.apply_retention(Retention(stays_before="2020-01-03"))
    assert removed == {"booking_state": 2, "room_maps": 1}
    assert await store.get_room_map("x", "B1") is not None
    assert await store.get_room_map("x", "B2") is None
