"""m012: the index of messages that ended without being delivered (dead, skipped, superseded)
keeps its rows, its condition written as comparisons instead of an IN list (SQLite builds an IN
list of three values into a temporary b-tree each time it evaluates the condition, which every
claim and settle did per row). The upgrade of a database written by the schema before it,
pending messages included, and the plan of the retention read that goes through it."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.models import AttemptRecord
from gateway.samples import sample_data
from gateway.store import SQLiteStore, connect
from gateway.store.interface import ClaimRoom, Retention, Settlement
from gateway.store.sqlite import retention
from gateway.store.sqlite.migrations import migrations
from tests.old_databases import insert_subscription, migrated_until, old_subscription

M012 = "m012_ended_messages_index_without_an_in_list"
DAY = 86_400.0

# id, state, attempts, updated_at (days ago), delivered_at (days ago)
OLD_MESSAGES = [
    ("msg_pending", "pending", 0, 0.0, None),
    ("msg_retry", "pending", 1, 0.0, None),
    ("msg_delivered_old", "delivered", 1, 10.0, 10.0),
    ("msg_delivered_new", "delivered", 1, 0.0, 0.0),
    ("msg_dead_old", "dead", 5, 10.0, None),
    ("msg_dead_new", "dead", 5, 0.0, None),
    ("msg_skipped_old", "skipped", 0, 10.0, None),
    ("msg_superseded_old", "superseded", 0, 10.0, None),
]


def old_database(path: Path) -> None:
    """A database as the release before m012 wrote it: one subscription, one event and a
    message in each state, the finished ones some long ago."""
    db = migrated_until(path, M012)
    now = time.time()
    subscription = old_subscription("t", "https://example.com/hook")
    insert_subscription(db, subscription)
    db.execute(
        "insert into events (seq, id, push_id, source, event, subject, product_id, option_id,"
        " data, created_at) values (1, 'evt_old', 'psh_old', 'test', 'booking_update',"
        " 'test:b', 'p', 'o', ?, ?)",
        [orjson.dumps(sample_data("booking_update")).decode(), now - 20 * DAY],
    )
    for n, (id, state, tried, updated_ago, delivered_ago) in enumerate(OLD_MESSAGES):
        db.execute(
            "insert into deliveries (id, event_seq, subscription_id, order_key, state, attempts,"
            " next_attempt_at, created_at, updated_at, delivered_at)"
            " values (?, 1, 'sub_old', ?, ?, ?, ?, ?, ?, ?)",
            [
                id,
                f"sub_old|test:b{n}",
                state,
                tried,
                now - 1,
                now - 20 * DAY,
                now - updated_ago * DAY,
                None if delivered_ago is None else now - delivered_ago * DAY,
            ],
        )
    db.close()


def ended_index(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        [sql] = conn.execute(
            "select sql from sqlite_master where type = 'index' and name = 'deliveries_ended'"
        ).fetchone()
    finally:
        conn.close()
    return str(sql)


async def test_a_database_from_before_m012_claims_its_pending_messages_and_prunes_ended_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old_database(path)
    assert " in (" in ended_index(path)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert " in (" not in ended_index(path)
        claimed = await store.claim_deliveries(ClaimRoom(10, 10), 60, ordering_max_wait=3600)
        assert sorted(d.id for d in claimed) == ["msg_pending", "msg_retry"]
        results = await store.settle_deliveries(
            [
                Settlement(
                    d,
                    AttemptRecord(
                        delivery_id=d.id,
                        subscription_id="sub_old",
                        attempt=d.attempts + 1,
                        attempted_at=time.time(),
                        outcome="dead",
                        status=500,
                    ),
                    "dead",
                )
                for d in claimed
            ]
        )
        assert results == [True, True]

        removed = await store.apply_retention(Retention(messages_before=time.time() - DAY))
        assert removed["deliveries"] == 4  # old: delivered, dead, skipped and superseded
        left = {d.id: d.state for d in await store.list_deliveries("sub_old", limit=20)}
        assert left == {
            "msg_pending": "dead",
            "msg_retry": "dead",
            "msg_delivered_new": "delivered",
            "msg_dead_new": "dead",
        }
        # Dead now, so pruned once they are old enough, through the rebuilt index.
        removed = await store.apply_retention(Retention(messages_before=time.time() + DAY))
        assert removed["deliveries"] == 4
        assert await store.list_deliveries("sub_old") == []
    finally:
        await store.close()


def test_retention_reads_ended_messages_through_the_index(tmp_path: Path) -> None:
    """SQLite uses a partial index only when the query repeats its condition as written."""
    db = connect(tmp_path / "plans.db")
    migrations.apply(db)
    params: Any = {k: 1 for k in re.findall(r":(\w+)", retention.FINISHED_CANDIDATES)}
    plan = [
        row[3]
        for row in db.execute(
            "explain query plan " + retention.FINISHED_CANDIDATES, params
        ).fetchall()
    ]
    assert any("deliveries_ended" in step for step in plan), plan
    assert any("deliveries_delivered" in step for step in plan), plan
    assert not any(step.startswith("SCAN deliveries") for step in plan), plan
