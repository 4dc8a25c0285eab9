"""Races between gateway processes on one PostgreSQL database, made deterministic: a third
connection holds a table lock so each process's transaction stops at a known statement, the test
waits until the server says both are waiting, then lets them go."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from gateway.models import AttemptRecord, DeliveryRecord, NewEvent
from gateway.store.interface import ClaimRoom, Settlement
from gateway.store.postgres import PostgresStore
from tests.fake_pms import eventually
from tests.receivers import booking_event, emit
from tests.test_store_shared import subscription

pytestmark = pytest.mark.postgres

ROOM = ClaimRoom(total=100, per_subscription=100)


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two gateway processes have."""
    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    await first.open()
    await second.open()
    yield first, second
    await second.close()
    await first.close()


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def waiting_for_locks(admin: asyncpg.Connection, count: int) -> None:
    """Until ``count`` other sessions of this database wait for a lock."""

    async def waiting() -> bool:
        found = await admin.fetchval(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and wait_event_type = 'Lock' and pid <> pg_backend_pid()"
        )
        return bool(found == count)

    await eventually(waiting, timeout=30)  # a loaded machine may take a while to get there


def versioned(subject: str, n: int, version: int) -> NewEvent:
    event = booking_event(subject, n)
    event.version = version
    return event


async def leased_push(
    store: PostgresStore, name: str
) -> Callable[[list[NewEvent]], Awaitable[int | None]]:
    """A push leased to ``store``, and how to complete it with some events. No order key: two
    pushes naming one booking (a Beds24 push of several bookings, a Channex feed read beside a
    named revision) may be processed at once by two processes."""
    push, _ = await store.insert_push(
        source="test", kind="k", payload={}, dedupe_key=name, order_key=None, lease_seconds=60
    )
    assert push.lease_token is not None
    token = push.lease_token

    def complete(events: list[NewEvent]) -> Awaitable[int | None]:
        return store.complete_push(push.id, token, events)

    return complete


async def test_a_new_booking_stored_by_two_processes_at_once_keeps_the_newer_version(
    stores: tuple[PostgresStore, PostgresStore], admin: asyncpg.Connection
) -> None:
    first, second = stores
    await first.insert_subscription(subscription("s1"))
    newer = await leased_push(first, "newer")
    older = await leased_push(second, "older")
    # Both processes read the booking's state before either has stored any: the first stops
    # storing its events (the lock), the second stops on the first's new state row.
    async with admin.transaction():
        await admin.execute("lock table events in share mode")
        storing_newer = asyncio.ensure_future(newer([versioned("test:b1", 2, version=2_000)]))
        await waiting_for_locks(admin, 1)
        storing_older = asyncio.ensure_future(older([versioned("test:b1", 1, version=1_000)]))
        await waiting_for_locks(admin, 2)
    assert await storing_newer == 1
    # The older version, delivered late by the PMS, is stale now: nothing more to send.
    assert await storing_older == 0
    row = await admin.fetchrow("select version, booking from booking_state where key = 'test:b1'")
    assert row["version"] == "2000"
    [message] = await first.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    assert message.data["booking"]["notes"] == "update 2"


def dead(record: DeliveryRecord) -> Settlement:
    attempt = AttemptRecord(
        delivery_id=record.id,
        subscription_id=record.subscription_id,
        attempt=record.attempts + 1,
        attempted_at=time.time(),
        outcome="dead",
        status=400,
        latency_ms=1.0,
    )
    return Settlement(record, attempt, "dead", disable_after=3600)


async def test_two_processes_settling_dead_messages_of_two_subscriptions_do_not_deadlock(
    stores: tuple[PostgresStore, PostgresStore], admin: asyncpg.Connection
) -> None:
    first, second = stores
    for name in ("s1", "s2"):
        await first.insert_subscription(subscription(name))
    await emit(first, [booking_event("test:b1"), booking_event("test:b2")])
    messages = await first.claim_deliveries(ROOM, 60, ordering_max_wait=3600)
    by_subscription: dict[str, list[DeliveryRecord]] = {"s1": [], "s2": []}
    for message in messages:
        by_subscription[message.subscription_id].append(message)
    # Each process settles a batch holding a dead message of each subscription, in the order its
    # messages happened to finish: one s1 first, the other s2 first.
    batches = [
        [dead(by_subscription["s1"][0]), dead(by_subscription["s2"][0])],
        [dead(by_subscription["s2"][1]), dead(by_subscription["s1"][1])],
    ]
    # Each transaction pauses after its first change to a subscription row (a trigger waiting for
    # the test's advisory lock), so both hold one subscription before either goes on.
    await admin.execute(
        "create function pause() returns trigger language plpgsql as"
        " $$ begin perform pg_advisory_xact_lock_shared(4242); return new; end $$;"
        " create trigger pause after update on subscriptions for each row execute function pause()"
    )
    async with admin.transaction():
        await admin.execute("select pg_advisory_xact_lock(4242)")
        settling = asyncio.ensure_future(first.settle_deliveries(batches[0]))
        await waiting_for_locks(admin, 1)
        settling_too = asyncio.ensure_future(second.settle_deliveries(batches[1]))
        await waiting_for_locks(admin, 2)
    assert await settling == [True, True]
    assert await settling_too == [True, True]
    assert {m.state for m in await first.list_deliveries("s1")} == {"dead"}
    assert {m.state for m in await first.list_deliveries("s2")} == {"dead"}
