"""Store invariants on both stores, and what PostgreSQL adds: several processes on one database.

Each "process" here is a store instance of its own (its own connections; for PostgreSQL its own
pool and LISTEN connection), opened on the same database, as two gateway processes would be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.models import AttemptRecord, RoomMap, RoomMapUpdate, Subscription
from gateway.store import SQLiteStore, utcnow
from gateway.store.interface import ClaimRoom, Retention, RoomMapConflict, Settlement, Store
from gateway.store.sqlite.migrations import migrations as sqlite_migrations
from tests.fake_pms import eventually
from tests.receivers import availability_event, booking_event, emit

OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture
async def open_store(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[OpenStore]:
    """Opens store instances on one database (the SQLite file, or the test's PostgreSQL one)."""
    opened: list[Store] = []
    url = request.getfixturevalue("pg_url") if store_kind == "postgres" else None

    async def open_() -> Store:
        store: Store
        if url is not None:
            from gateway.store.postgres import PostgresStore

            store = PostgresStore(url)
        else:
            store = SQLiteStore(tmp_path / "shared.db")
        await store.open()
        opened.append(store)
        return store

    yield open_
    for store in reversed(opened):
        await store.close()


def subscription(
    id: str, tenant: str = "reseller-a", event: str = "booking_update"
) -> Subscription:
    now = utcnow()
    return Subscription(
        id=id,
        tenant=tenant,
        event=event,  # type: ignore[arg-type]
        url="https://receiver.example/hook",
        secret="whsec_abc",
        created_at=now,
        updated_at=now,
    )


def delivered(record: Any) -> Settlement:
    attempt = AttemptRecord(
        delivery_id=record.id,
        subscription_id=record.subscription_id,
        attempt=record.attempts + 1,
        attempted_at=time.time(),
        outcome="delivered",
        status=200,
        latency_ms=1.0,
    )
    return Settlement(record, attempt, "delivered")


ROOM = ClaimRoom(total=100, per_subscription=100)


# -- both stores ---------------------------------------------------------------------------------


@pytest.mark.both_stores
async def test_two_claimers_never_take_one_row(open_store: OpenStore) -> None:
    first, second = await open_store(), await open_store()
    await first.insert_subscription(subscription("s1"))
    await emit(first, [booking_event(f"test:b{n}") for n in range(60)])
    claims = await asyncio.gather(
        *(
            store.claim_deliveries(ClaimRoom(7, 100), 60, ordering_max_wait=3600)
            for store in [first, second] * 6
        )
    )
    ids = [record.id for batch in claims for record in batch]
    # A claim never waits for another (PostgreSQL passes over a subscription being claimed for
    # elsewhere): whatever concurrent claims left is there for the next ones.
    while batch := await second.claim_deliveries(ClaimRoom(7, 100), 60, ordering_max_wait=3600):
        ids += [record.id for record in batch]
    assert len(ids) == len(set(ids)) == 60


@pytest.mark.both_stores
async def test_a_claim_serves_every_subscription_it_has_room_for(open_store: OpenStore) -> None:
    # A claim's room is shared by what the subscriptions actually have due: one with a single
    # message due leaves the rest of the room to the others (a claim that reserved a whole
    # subscription's room for it served only total/per_subscription subscriptions a round, so
    # the others waited for those to finish, however slow their receivers).
    store = await open_store()
    for name in ("s1", "s2", "s3"):
        await store.insert_subscription(subscription(name))
    await emit(store, [booking_event("test:b1")])
    claimed = await store.claim_deliveries(ClaimRoom(3, 3), 60, ordering_max_wait=3600)
    assert sorted(d.subscription_id for d in claimed) == ["s1", "s2", "s3"]
    assert await store.settle_deliveries([delivered(d) for d in claimed]) == [True] * 3
    # A tenant's room likewise: its subscriptions share what they take, not what they may take.
    await emit(store, [booking_event("test:b2")])
    room = ClaimRoom(10, 5, per_tenant=5, tenant_of=dict.fromkeys(("s1", "s2", "s3"), "reseller-a"))
    claimed = await store.claim_deliveries(room, 60, ordering_max_wait=3600)
    assert sorted(d.subscription_id for d in claimed) == ["s1", "s2", "s3"]


@pytest.mark.both_stores
async def test_order_per_booking_holds_across_claimers(open_store: OpenStore) -> None:
    first, second = await open_store(), await open_store()
    await first.insert_subscription(subscription("s1"))
    for n in range(3):
        await emit(first, [booking_event("test:one-booking", n)])
    [taken] = await first.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    # The second update waits while the first is leased, whoever asks.
    assert await second.claim_deliveries(ROOM, 60, ordering_max_wait=3600) == []
    assert await first.claim_deliveries(ROOM, 60, ordering_max_wait=3600) == []
    assert await first.settle_deliveries([delivered(taken)]) == [True]
    [next_one] = await second.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    assert next_one.data["booking"]["notes"] == "update 1"


@pytest.mark.both_stores
async def test_a_settle_batch_records_the_held_leases_and_refuses_a_lost_one(
    open_store: OpenStore,
) -> None:
    """One lease in the batch ran out and was taken over: the others are recorded, that one is
    left to its new holder, attempts and all."""
    dead, alive = await open_store(), await open_store()
    await dead.insert_subscription(subscription("s1"))
    await emit(dead, [booking_event(f"test:b{n}") for n in range(3)])
    first, lost = await dead.claim_deliveries(ClaimRoom(2, 100), 60, ordering_max_wait=3600)
    # The second one's lease ran out (as if): another claim takes it over.
    [short] = await dead.claim_deliveries(ClaimRoom(1, 100), 0.05, ordering_max_wait=3600)

    async def taken_over() -> list[Any]:
        return await alive.claim_deliveries(ROOM, 60, ordering_max_wait=3600)

    [again] = await eventually(taken_over)
    assert again.id == short.id

    assert await dead.settle_deliveries([delivered(first), delivered(short), delivered(lost)]) == [
        True,
        False,
        True,
    ]
    states = {d.id: d.state for d in await alive.list_deliveries("s1")}
    assert states == {first.id: "delivered", lost.id: "delivered", short.id: "leased"}
    attempts = await alive.list_attempts("s1")
    assert sorted(a.delivery_id for _, a, _ in attempts) == sorted([first.id, lost.id])
    assert await alive.settle_deliveries([delivered(again)]) == [True]


@pytest.mark.both_stores
async def test_an_expired_lease_is_taken_over_with_the_same_webhook_id(
    open_store: OpenStore,
) -> None:
    dead, alive = await open_store(), await open_store()
    await dead.insert_subscription(subscription("s1"))
    await emit(dead, [booking_event("test:b1")])
    [held] = await dead.claim_deliveries(ROOM, 0.05, ordering_max_wait=3600)

    async def taken_over() -> list[Any]:
        return await alive.claim_deliveries(ROOM, 60, ordering_max_wait=3600)

    [again] = await eventually(taken_over)
    assert again.id == held.id
    assert again.lease_token != held.lease_token
    # The process that lost the lease can no longer settle it.
    assert await dead.settle_deliveries([delivered(held)]) == [False]
    assert await alive.settle_deliveries([delivered(again)]) == [True]


@pytest.mark.both_stores
async def test_a_push_of_one_booking_is_not_leased_while_an_earlier_one_waits(
    open_store: OpenStore,
) -> None:
    first, second = await open_store(), await open_store()
    a, _ = await first.insert_push(
        source="x", kind="k", payload={}, dedupe_key="a", order_key="b1", lease_seconds=60
    )
    b, _ = await second.insert_push(
        source="x", kind="k", payload={}, dedupe_key="b", order_key="b1", lease_seconds=60
    )
    assert a.lease_token is not None
    assert b.lease_token is None
    assert await second.claim_pushes(10, 60) == []
    assert await first.complete_push(a.id, a.lease_token, []) == 0
    [claimed] = await second.claim_pushes(10, 60)
    assert claimed.id == b.id


@pytest.mark.both_stores
async def test_a_push_waiting_behind_an_earlier_one_is_not_due_before_it(
    open_store: OpenStore,
) -> None:
    # The processor sleeps until the next push due: one that can't be claimed yet (an earlier
    # push of its booking is deferred) must not make it claim again and again meanwhile.
    store = await open_store()
    first, _ = await store.insert_push(
        source="x", kind="k", payload={}, dedupe_key="a", order_key="x:B1", lease_seconds=60
    )
    assert first.lease_token is not None
    assert await store.defer_push(first.id, first.lease_token, "PMS down", 600)
    await store.insert_push(source="x", kind="k", payload={}, dedupe_key="b", order_key="x:B1")
    due = await store.next_push_due()
    assert due is not None and due > time.time() + 300
    assert await store.claim_pushes(10, 60) == []
    # A push of another booking is due at once.
    await store.insert_push(source="x", kind="k", payload={}, dedupe_key="c", order_key="x:B2")
    due = await store.next_push_due()
    assert due is not None and due <= time.time()


@pytest.mark.both_stores
async def test_a_room_map_written_meanwhile_fails_the_later_push(open_store: OpenStore) -> None:
    first, second = await open_store(), await open_store()
    pushes = []
    for name, store in (("a", first), ("b", second)):
        push, _ = await store.insert_push(
            source="x", kind="k", payload={}, dedupe_key=name, order_key=None, lease_seconds=60
        )
        assert push.lease_token is not None
        pushes.append(push)
    update = RoomMapUpdate(source="x", booking="B1", rooms=RoomMap(), generation=0)
    assert (
        await first.complete_push(pushes[0].id, pushes[0].lease_token or "", [], room_maps=[update])
        == 0
    )
    with pytest.raises(RoomMapConflict):
        await second.complete_push(
            pushes[1].id, pushes[1].lease_token or "", [], room_maps=[update]
        )
    stored = await second.get_room_map("x", "B1")
    assert stored is not None and stored[1] == 1


@pytest.mark.both_stores
async def test_the_tenant_cap_holds_for_concurrent_creates(open_store: OpenStore) -> None:
    stores = [await open_store(), await open_store()]
    created = await asyncio.gather(
        *(
            stores[n % 2].insert_subscription(subscription(f"s{n}"), max_per_tenant=3)
            for n in range(10)
        )
    )
    assert sum(created) == 3
    assert len(await stores[0].list_subscriptions("reseller-a")) == 3


@pytest.mark.both_stores
async def test_superseded_availability_and_replay(open_store: OpenStore) -> None:
    store = await open_store()
    await store.insert_subscription(subscription("s1", event="availability_update"))
    await emit(store, [availability_event(n=1), availability_event(n=2)])
    await emit(store, [availability_event(n=3)])
    [newest] = await store.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    assert newest.data["availability"]["vacancies"] == 3
    assert len(await store.list_deliveries("s1", state="superseded")) == 2
    assert await store.settle_deliveries([delivered(newest)]) == [True]
    assert await store.replay_deliveries("s1", 0) == 1
    [again] = await store.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    assert again.id == newest.id


@pytest.mark.both_stores
async def test_a_newer_availability_supersedes_the_waiting_message_of_each_subscription(
    open_store: OpenStore,
) -> None:
    """One event to several subscriptions supersedes each one's waiting message of its subject,
    but not a message already in flight, nor another subject's."""
    store = await open_store()
    for id in ("s1", "s2", "s3"):
        await store.insert_subscription(subscription(id, event="availability_update"))
    await emit(store, [availability_event(n=1)])
    [in_flight] = await store.claim_deliveries(
        ClaimRoom(1, 1, in_flight={"s1": 1, "s2": 1}), 60, ordering_max_wait=3600
    )
    assert in_flight.subscription_id == "s3"
    await emit(store, [availability_event("test:room-1|rate-1|2030-01-02", n=7)])
    await emit(store, [availability_event(n=2)])
    for id, superseded in (("s1", 1), ("s2", 1), ("s3", 0)):
        assert len(await store.list_deliveries(id, state="superseded")) == superseded, id
        waiting = await store.list_deliveries(id, state="pending")
        assert len(waiting) == 2, id  # the other day's and the newest
    assert [d.id for d in await store.list_deliveries("s3", state="leased")] == [in_flight.id]


# -- PostgreSQL: what only a shared server gives ---------------------------------------------


@pytest.mark.postgres
async def test_postgres_migrations_carry_the_sqlite_history(pg_url: str) -> None:
    from gateway.store.postgres import PostgresStore, migrations

    stores = [PostgresStore(pg_url) for _ in range(3)]
    await asyncio.gather(*(store.open() for store in stores))  # processes starting at once
    try:
        async with stores[0].pool.acquire() as conn:
            applied = await migrations.applied_names(conn)
    finally:
        for store in stores:
            await store.close()
    assert applied == [m.name for m in sqlite_migrations._migrations]
    again = PostgresStore(pg_url)
    await again.open()  # nothing left to apply
    await again.close()


@pytest.mark.postgres
async def test_postgres_per_subscription_limit_holds_across_processes(pg_url: str) -> None:
    from gateway.store.postgres import PostgresStore

    stores = [PostgresStore(pg_url) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        await stores[0].insert_subscription(subscription("s1"))
        await emit(stores[0], [booking_event(f"test:b{n}") for n in range(40)])
        # Each process has nothing in flight itself and room for 4 per subscription.
        room = ClaimRoom(total=100, per_subscription=4)
        claims = await asyncio.gather(
            *(store.claim_deliveries(room, 60, ordering_max_wait=3600) for store in stores * 3)
        )
        leased = [record for batch in claims for record in batch]
        assert len(leased) == 4  # not 4 per process
        # Settling two frees two, for any process.
        assert await stores[1].settle_deliveries([delivered(r) for r in leased[:2]]) == [True, True]
        more = await stores[2].claim_deliveries(room, 60, ordering_max_wait=3600)
        assert len(more) == 2
    finally:
        for store in stores:
            await store.close()


@pytest.mark.postgres
async def test_postgres_per_tenant_limit_holds_across_processes(pg_url: str) -> None:
    from gateway.store.postgres import PostgresStore

    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    for store in (first, second):
        await store.open()
    try:
        for name in ("s1", "s2"):
            await first.insert_subscription(subscription(name))
        await emit(first, [booking_event(f"test:b{n}") for n in range(4)])
        # Each process has nothing in flight itself and room for 3 of the tenant's messages.
        room = ClaimRoom(
            total=100,
            per_subscription=10,
            per_tenant=3,
            tenant_of={"s1": "reseller-a", "s2": "reseller-a"},
        )
        leased = await first.claim_deliveries(room, 60, ordering_max_wait=3600)
        assert len(leased) == 3
        assert await second.claim_deliveries(room, 60, ordering_max_wait=3600) == []
        # Settling two frees two, for any process.
        assert await first.settle_deliveries([delivered(r) for r in leased[:2]]) == [True, True]
        assert len(await second.claim_deliveries(room, 60, ordering_max_wait=3600)) == 2
    finally:
        for store in (second, first):
            await store.close()


@pytest.mark.postgres
async def test_postgres_commits_wait_for_the_disk_whatever_the_database_says(
    pg_server: Any, pg_url: str
) -> None:
    # "Acknowledged only once stored": a push's commit must be flushed before its 200, also on a
    # database set to synchronous_commit = off; a stronger setting is the operator's and stays.
    from gateway.store.postgres import PostgresStore

    database = pg_url.rsplit("/", 1)[1]
    for setting, expected in (("off", "on"), ("remote_apply", "remote_apply")):
        pg_server.psql(f'alter database "{database}" set synchronous_commit = {setting}')
        store = PostgresStore(pg_url)
        await store.open()
        try:
            async with store.pool.acquire() as conn:
                assert await conn.fetchval("show synchronous_commit") == expected
        finally:
            await store.close()


@pytest.mark.postgres
async def test_postgres_notify_wakes_the_other_processes(pg_url: str) -> None:
    from gateway.store.postgres import PostgresStore

    writer, listener = PostgresStore(pg_url), PostgresStore(pg_url)
    await writer.open()
    await listener.open()
    woken: dict[str, asyncio.Event] = {"pushes": asyncio.Event(), "deliveries": asyncio.Event()}
    listener.on_pushes_waiting(woken["pushes"].set)
    listener.on_deliveries_waiting(woken["deliveries"].set)
    try:
        # The listener wakes everyone once it is listening (work may have been stored before).
        await asyncio.wait_for(woken["deliveries"].wait(), 30)
        for event in woken.values():
            event.clear()
        await writer.insert_subscription(subscription("s1"))
        # A push nobody leased wakes the processors of every process ...
        await writer.insert_push(source="x", kind="k", payload={}, dedupe_key="a", order_key=None)
        await asyncio.wait_for(woken["pushes"].wait(), 30)
        assert not woken["deliveries"].is_set()
        # ... and a processed push with deliveries wakes their delivery workers.
        await emit(writer, [booking_event("test:b1")])
        await asyncio.wait_for(woken["deliveries"].wait(), 30)
    finally:
        await writer.close()
        await listener.close()


@pytest.mark.both_stores
async def test_retention_prunes_finished_messages_and_their_events(open_store: OpenStore) -> None:
    store = await open_store()
    await store.insert_subscription(subscription("s1"))
    await emit(store, [booking_event("test:b1"), booking_event("test:b2")])
    first, second = await store.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    assert await store.settle_deliveries([delivered(first)]) == [True]
    removed = await store.apply_retention(Retention(messages_before=time.time() + 60))
    # The delivered message and its attempt go; the one in flight and its event stay.
    assert removed == {"deliveries": 1, "attempts": 1, "events": 1}
    assert [d.id for d in await store.list_deliveries("s1")] == [second.id]
    assert await store.settle_deliveries([delivered(second)]) == [True]
    assert await store.apply_retention(Retention(messages_before=0)) == {}


@pytest.mark.both_stores
async def test_erase_booking_removes_it_everywhere_and_keeps_the_rest(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    await store.insert_subscription(subscription("s1"))
    for booking in ("B1", "B2"):
        push, _ = await store.insert_push(
            source="x",
            kind="booking",
            payload={"booking": booking},
            dedupe_key=booking,
            order_key=f"x:{booking}",
            lease_seconds=60,
        )
        event = booking_event(f"x:{booking}")
        assert await store.complete_push(push.id, push.lease_token or "", [event]) == 1
    removed = await store.erase_booking("x", "B1")
    assert removed["pushes"] == removed["events"] == removed["deliveries"] == 1
    assert removed["booking_state"] == 1
    [left] = await store.list_pushes()
    assert left.payload == {"booking": "B2"}
    [kept] = await store.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    assert kept.order_key == "s1|x:B2"


@pytest.mark.both_stores
async def test_retention_drops_old_pushes_and_past_stays(open_store: OpenStore) -> None:
    store = await open_store()
    push, _ = await store.insert_push(
        source="x", kind="k", payload={}, dedupe_key="a", order_key=None, lease_seconds=60
    )
    event = booking_event("x:B1")
    event.data["booking"]["availability"]["localDateTimeEnd"] = "2020-01-02T11:00:00+00:00"
    assert await store.complete_push(push.id, push.lease_token or "", [event]) == 0
    removed = await store.apply_retention(
        Retention(pushes_before=time.time() + 60, stays_before="2020-01-03")
    )
    assert removed == {"pushes": 1, "booking_state": 1}
    assert await store.list_pushes() == []


# -- NUL in text from outside --------------------------------------------------------------------
# A subscriber's answer, a PMS's ids and free text may hold NUL characters. SQLite keeps them;
# PostgreSQL refuses NUL in any text and any JSON it parses, so its store keeps U+FFFD in their
# place. Either way the work goes on: nothing fails (to be retried and fail again), nothing is
# sent twice.


def unmasked(text: str | None) -> str | None:
    """What was given, whichever store kept it (PostgreSQL's U+FFFD read back as NUL)."""
    return None if text is None else text.replace("\ufffd", "\x00")


@pytest.mark.both_stores
async def test_a_subscriber_answer_holding_nul_is_recorded(open_store: OpenStore) -> None:
    store = await open_store()
    await store.insert_subscription(subscription("s1"))
    await emit(store, [booking_event("test:b1"), booking_event("test:b2")])
    first, second = await store.claim_deliveries(ROOM, 60, ordering_max_wait=3600)

    def attempt(record: object, outcome: str, status: int, error: str | None) -> AttemptRecord:
        return AttemptRecord(
            delivery_id=first.id if record is first else second.id,
            subscription_id="s1",
            attempt=1,
            attempted_at=time.time(),
            outcome=outcome,  # type: ignore[arg-type]
            status=status,
            latency_ms=1.0,
            error=error,
            response="ok\x00\x00 (a body in UTF-16)",
        )

    settled = await store.settle_deliveries(
        [
            Settlement(first, attempt(first, "delivered", 200, None), "delivered"),
            Settlement(
                second,
                attempt(second, "retry", 500, "HTTP 500 \x00"),
                "pending",
                next_attempt_at=time.time() + 3600,
                body=b"{}",
            ),
        ]
    )
    assert settled == [True, True]
    attempts = {state: found for _, found, state in await store.list_attempts("s1")}
    assert unmasked(attempts["delivered"].response) == "ok\x00\x00 (a body in UTF-16)"
    assert unmasked(attempts["pending"].error) == "HTTP 500 \x00"
    [waiting] = await store.list_deliveries("s1", state="pending")
    assert unmasked(waiting.last_error) == "HTTP 500 \x00"


@pytest.mark.both_stores
async def test_a_booking_holding_nul_is_stored_sent_once_and_read_back(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    await store.insert_subscription(subscription("s1"))
    for n in range(2):  # the PMS sends the same booking twice
        push, created = await store.insert_push(
            source="x",
            kind="booking",
            payload={"id": "B\x00"},
            dedupe_key=f"B\x00@{n}",
            order_key="x:B\x00",
            lease_seconds=60,
        )
        assert created and push.lease_token is not None
        event = booking_event("x:B\x00")
        event.data["booking"]["notes"] = "late \x00 arrival"
        event.revision = "r\x00"
        assert await store.complete_push(push.id, push.lease_token, [event], note="n\x00") == (
            1 if n == 0 else 0
        )
    [message] = await store.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    assert unmasked(message.data["booking"]["notes"]) == "late \x00 arrival"
    latest = await store.latest_booking(event.data["booking"]["uuid"])
    assert latest is not None
    assert unmasked(latest.booking["notes"]) == "late \x00 arrival"


@pytest.mark.both_stores
async def test_availability_of_an_id_holding_nul_is_stored_and_known(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    day = "x:room\x00|rate|2030-01-01"
    assert await store.known_availability([day]) == {}
    await emit(store, [availability_event(day, 3)])
    known = await store.known_availability([day, "x:other|rate|2030-01-01"])
    assert list(known) == [day]
    assert known[day]["vacancies"] == 3
