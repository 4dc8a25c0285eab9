"""Storage v2 (m008): small delivery rows, bodies kept only for retries, batched settles, and the
upgrade of a database written by the previous schema, pending deliveries included."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.models import AttemptRecord, Subscription
from gateway.samples import sample_data
from gateway.store import SQLiteStore, connect, utcnow
from gateway.store.interface import ClaimRoom, Settlement
from gateway.store.sqlite.migrations import migrations
from tests.old_databases import insert_subscription, migrated_until, old_subscription
from tests.receivers import Receiver, attempts, booking_event, emit, wait_until_async
from tests.tenants import TENANT_A

V2 = "m008_storage_v2"


def old_database(path: Path, url: str) -> dict[str, Any]:
    """A database as the previous release wrote it (migrations up to m008), with one subscription,
    one event and three messages: delivered, pending (never tried) and waiting for a retry with
    the body its first attempt sent."""
    db = migrated_until(path, V2)
    now = time.time()
    subscription = old_subscription(str(TENANT_A["name"]), url)
    insert_subscription(db, subscription)
    data = sample_data("booking_update")
    db.execute(
        "insert into events (seq, id, push_id, source, event, subject, product_id, option_id,"
        " data, created_at) values (1, 'evt_old', 'psh_old', 'test', 'booking_update',"
        " 'test:b1', 'p', 'o', ?, ?)",
        [orjson.dumps(data).decode(), now],
    )
    retry_body = b'{"sent": "by the previous release", "byte": "for byte"}'
    messages = [
        # id, order_key, state, attempts, body, delivered_at
        ("msg_delivered", "sub_old|test:b0", "delivered", 1, b'{"old": 1}', now),
        ("msg_pending", "sub_old|test:b1", "pending", 0, None, None),
        ("msg_retry", "sub_old|test:b2", "pending", 1, retry_body, None),
    ]
    for id, order_key, state, tried, body, delivered_at in messages:
        db.execute(
            "insert into deliveries (id, event_seq, subscription_id, event, order_key, state,"
            " attempts, next_attempt_at, body, created_at, updated_at, delivered_at)"
            " values (?, 1, 'sub_old', 'booking_update', ?, ?, ?, ?, ?, ?, ?, ?)",
            [id, order_key, state, tried, now - 1, body, now - 1, now - 1, delivered_at],
        )
        if tried:
            db.execute(
                "insert into attempts (delivery_id, subscription_id, attempt, attempted_at,"
                " outcome, status) values (?, 'sub_old', 1, ?, ?, ?)",
                [
                    id,
                    now - 1,
                    "delivered" if state == "delivered" else "retry",
                    200 if state == "delivered" else 500,
                ],
            )
    db.close()
    return {"retry_body": retry_body}


async def test_a_database_from_before_v2_is_upgraded_in_place_and_its_pending_messages_delivered(
    tmp_path: Path,
    aiohttp_client: Any,
    fast_config: Callable[..., GatewayConfig],
    receiver: Receiver,
) -> None:
    config = fast_config()
    old = old_database(config.storage.path, receiver.url())

    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))

    got = await receiver.wait_for(2)
    by_id = {request.webhook_id: request for request in got}
    assert set(by_id) == {"msg_pending", "msg_retry"}  # the delivered one is not sent again
    assert by_id["msg_retry"].body == old["retry_body"]  # a retry sends the same bytes
    fresh = by_id["msg_pending"].json()
    assert fresh["webhook"]["id"] == "sub_old"
    assert fresh["booking"] == sample_data("booking_update")["booking"]

    async def all_delivered() -> bool:
        listed = await attempts(client, "sub_old")
        return len(listed) == 4 and all(a["state"] == "delivered" for a in listed)

    await wait_until_async(all_delivered, "the upgraded messages delivered")
    listed = await attempts(client, "sub_old")
    assert sorted((a["messageId"], a["attempt"]) for a in listed) == [
        ("msg_delivered", 1),
        ("msg_pending", 1),
        ("msg_retry", 1),
        ("msg_retry", 2),
    ]
    conn = sqlite3.connect(config.storage.path)
    try:
        columns = {row[1] for row in conn.execute("pragma table_info(deliveries)")}
        kept = conn.execute("select count(*) from delivery_bodies").fetchone()[0]
    finally:
        conn.close()
    assert "body" not in columns and "event" not in columns
    assert kept == 0  # delivered: nothing is kept for it any more


async def store_with_subscription(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "v2.db")
    await store.open()
    now = utcnow()
    await store.insert_subscription(
        Subscription(
            id="a",
            tenant="t",
            event="booking_update",
            url="https://example.com/hook",
            secret="whsec_abc",
            created_at=now,
            updated_at=now,
        )
    )
    return store


def attempt(delivery_id: str, outcome: Any = "delivered", status: int = 200) -> AttemptRecord:
    return AttemptRecord(
        delivery_id=delivery_id,
        subscription_id="a",
        attempt=1,
        attempted_at=time.time(),
        outcome=outcome,
        status=status,
    )


async def test_a_batch_of_settlements_records_each_and_fences_each_by_its_lease(
    tmp_path: Path,
) -> None:
    store = await store_with_subscription(tmp_path)
    try:
        await emit(store, [booking_event(f"s:b{n}") for n in range(3)])
        first, second, third = await store.claim_deliveries(
            ClaimRoom(10, 10), 60, ordering_max_wait=3600
        )
        stolen = second.model_copy(update={"lease_token": "someone else's"})
        results = await store.settle_deliveries(
            [
                Settlement(first, attempt(first.id), "delivered"),
                Settlement(stolen, attempt(second.id), "delivered"),
                Settlement(
                    third,
                    attempt(third.id, "retry", 500),
                    "pending",
                    next_attempt_at=time.time() - 1,
                    body=b'{"kept": true}',
                ),
            ]
        )
        assert results == [True, False, True]
        listed = await store.list_attempts("a")
        assert sorted(a.delivery_id for _, a, _ in listed) == sorted([first.id, third.id])
        # The retry is claimed again with the body its first attempt sent.
        [again] = await store.claim_deliveries(ClaimRoom(10, 10), 60, ordering_max_wait=3600)
        assert again.id == third.id and again.body == b'{"kept": true}'
        assert again.attempts == 1
    finally:
        await store.close()


def test_the_hot_statements_seek_by_index_and_never_scan_the_deliveries(tmp_path: Path) -> None:
    """Every statement run per event, per claim or per settle finds its rows through an index: a
    partial index is used only when the query repeats its condition, and one that doesn't scans
    every message ever stored (a 9,000-message burst spent 40 % of its CPU so)."""
    from gateway.store.sqlite import deliveries, pushes

    db = connect(tmp_path / "plans.db")
    migrations.apply(db)
    statements = {
        "supersede": pushes.SUPERSEDE,
        "supersede, one event to five subscriptions": pushes.supersede_statement(5),
        "claim": deliveries.CLAIM_FOR_SUBSCRIPTION,
        "settle": deliveries.SETTLE,
        "queued": deliveries.SUBSCRIPTIONS_QUEUED,
        "next due": deliveries.NEXT_DUE,
        "claim pushes": pushes.CLAIM_PUSHES,
        "fan-out lease: backlog": deliveries.BACKLOG,
        "fan-out lease: unfinished": deliveries.UNFINISHED,
    }
    for name, sql in statements.items():
        params: Any = {k: 1 for k in re.findall(r":(\w+)", sql)} or [1] * sql.count("?")
        plan = [row[3] for row in db.execute("explain query plan " + sql, params).fetchall()]
        scans = [step for step in plan if re.match(r"SCAN (deliveries|pushes|events)\b", step)]
        assert not scans, f"{name}: {plan}"


def test_trusted_builds_the_model_model_construct_would_and_falls_back_when_unsure() -> None:
    """``trusted`` skips ``model_construct``'s per-field work for our own rows: the model is the
    same (equal, same fields set, copies and dumps alike); with a field missing it is
    ``model_construct`` again (defaults filled in), never a model without the attribute."""
    from gateway.models import DeliveryRecord, trusted

    values: dict[str, Any] = {
        "seq": 1,
        "id": "msg_1",
        "event_seq": 2,
        "subscription_id": "s",
        "event": "availability_update",
        "order_key": "s|x",
        "state": "leased",
        "attempts": 0,
        "replayed_after": 0,
        "next_attempt_at": 1.0,
        "lease_token": "lease_1",
        "body": None,
        "last_status": None,
        "last_error": None,
        "created_at": 1.0,
        "delivered_at": None,
        "data": {"availability": {"id": "2026-01-01"}},
    }
    fast = trusted(DeliveryRecord, dict(values))
    slow = DeliveryRecord.model_construct(**values)
    assert fast == slow and fast.model_dump() == slow.model_dump()
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_copy(update={"state": "delivered"}).state == "delivered"
    partial = {k: v for k, v in values.items() if k not in ("replayed_after", "data")}
    filled = trusted(DeliveryRecord, partial)
    assert (filled.replayed_after, filled.data) == (0, {})
