"""A database with history: N delivered messages, written straight into SQLite.

Pushing a million bookings through the gateway would take longer than the whole run, so the
history is bulk-inserted into the tables the gateway's own migrations create (the schema comes
from ``SQLiteStore.open``, never from a copy of it). Its shape is what a week of traffic leaves
behind: every push processed into one booking event, fanned out to ``fanout`` subscriptions,
each delivery delivered on its first attempt (a small row: storage v2 keeps no body for a delivered
message), plus the booking state and the attempt log. Times lie
within the retention window, so the gateway's start-up prune finds nothing to delete (it still
has to look). The subscriptions are deleted ones, so ingest measured on top of this history fans
out to nobody, exactly like the empty-database figure it is compared with.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.bodies import sample_path
from gateway.samples import sample_data
from gateway.store import SQLiteStore
from gateway.store.lookups import booking_lookups

DAY = 86400.0
BATCH = 20_000
# Ids far away from any the load generators use, so history never dedupes a measured push.
FIRST_BOOKING = 900_000_000


def _create_schema(path: Path) -> None:
    async def create() -> None:
        store = SQLiteStore(path)
        await store.open()
        await store.close()

    asyncio.run(create())


def _batched(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def prefill(path: Path, deliveries: int, fanout: int = 10) -> dict[str, Any]:
    """Fill a new database at ``path`` with ``deliveries`` delivered messages."""
    started = time.perf_counter()
    _create_schema(path)
    events = max(deliveries // fanout, 1)
    now = time.time()
    week = 6 * DAY  # inside the shipped 7-day retention
    booking = json.loads(sample_path("beds24-v2-booking-1.json").read_text())[0]["booking"]
    data = sample_data("booking_update")
    subs = [f"sub_history_{i:02d}" for i in range(fanout)]
    event_data = json.dumps(data)
    booking_json = json.dumps(data["booking"])

    def at(i: int) -> float:
        return now - week + week * i / events

    db = sqlite3.connect(str(path))
    try:
        db.execute("PRAGMA synchronous = OFF")  # the prefill is setup, not what is measured
        db.execute("BEGIN")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - week))
        db.executemany(
            "insert into subscriptions (id, tenant, event, url, secret, active, created_at,"
            " updated_at, deleted_at) values (?, 'demo-reseller', 'booking_update', ?, ?, 0, ?,"
            " ?, ?)",
            [
                (s, "http://127.0.0.1:9/gone", "whsec_aGlzdG9yeQ==", stamp, stamp, stamp)
                for s in subs
            ],
        )

        def pushes() -> Iterator[tuple[Any, ...]]:
            for i in range(events):
                number = FIRST_BOOKING + i
                payload = json.dumps([{**booking, "id": number}])
                key = hashlib.sha256(f"{number}".encode()).hexdigest()
                yield (f"psh_history_{i}", f"v2:{key}", f"beds24:{number}", payload, at(i))

        for batch in _batched(pushes()):
            db.executemany(
                "insert into pushes (id, source, kind, dedupe_key, order_key, payload, state,"
                " attempts, next_attempt_at, received_at, processed_at) values"
                " (?, 'beds24', 'v2', ?, ?, ?, 'processed', 1, ?5, ?5, ?5)",
                batch,
            )

        def event_rows() -> Iterator[tuple[Any, ...]]:
            for i in range(events):
                subject = f"beds24:{FIRST_BOOKING + i}"
                yield (i + 1, f"evt_history_{i}", f"psh_history_{i}", subject, event_data, at(i))

        for batch in _batched(event_rows()):
            db.executemany(
                "insert into events (seq, id, push_id, source, event, subject, product_id,"
                " option_id, data, created_at) values"
                " (?, ?, ?, 'beds24', 'booking_update', ?, '281392', '1', ?, ?)",
                batch,
            )
        lookups = booking_lookups(data["booking"])
        for batch in _batched(
            (f"beds24:{FIRST_BOOKING + i}", booking_json, at(i), *lookups) for i in range(events)
        ):
            db.executemany(
                "insert into booking_state (key, revision, booking, updated_at, uuid,"
                " supplier_reference, reseller_reference, stay_end) values"
                " (?, 'history', ?, ?, ?, ?, ?, ?)",
                batch,
            )

        def delivery_rows() -> Iterator[tuple[Any, ...]]:
            for n in range(deliveries):
                i, sub = n // fanout, subs[n % fanout]
                moment = at(min(i, events - 1))
                order_key = f"{sub}|beds24:{FIRST_BOOKING + i}"
                yield (n + 1, f"msg_history_{n}", min(i, events - 1) + 1, sub, order_key, moment)

        for batch in _batched(delivery_rows()):
            db.executemany(
                "insert into deliveries (seq, id, event_seq, subscription_id, order_key, state,"
                " attempts, next_attempt_at, last_status, created_at, updated_at,"
                " delivered_at) values (?, ?, ?, ?, ?, 'delivered', 1, ?6, 200, ?6, ?6, ?6)",
                batch,
            )
        for batch in _batched(
            (n + 1, subs[n % fanout], at(min(n // fanout, events - 1))) for n in range(deliveries)
        ):
            db.executemany(
                "insert into attempts (delivery_seq, subscription_id, attempt, attempted_at,"
                " outcome, status, latency_ms, response) values"
                " (?, ?, 1, ?, 'delivered', 200, 3.0, 'ok')",
                batch,
            )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    # Gigabytes just written are still being flushed by the kernel; let that finish now, or the
    # measurement that follows would compete with it for the disk.
    os.sync()
    return {
        "stored_deliveries": deliveries,
        "stored_events": events,
        "db_mb": path.stat().st_size / 1e6,
        "prefill_s": time.perf_counter() - started,
    }
