"""The gateway command on PostgreSQL, as real subprocesses: serve --workers, migrate-store, and
what an unreachable database says (never its password)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.delivery.slots import DeliverySlots
from gateway.models import AttemptRecord, BookingFilter, NewEvent, Subscription
from gateway.store import SQLiteStore, utcnow
from gateway.store.interface import Settlement
from gateway.store.postgres import PostgresStore
from tests.test_cli import demo_config, free_port, gateway

PASSWORD = "hunter2-not-logged"


def pg_config(tmp_path: Path, url: str) -> Path:
    path = demo_config(tmp_path)
    text = path.read_text().replace('path = "gateway.db"', f'url = "{url}"  #', 1)
    path.write_text(text)
    return path


def test_workers_are_refused_on_sqlite(tmp_path: Path) -> None:
    result = gateway("serve", "--config", str(demo_config(tmp_path)), "--workers", "2")
    assert result.returncode == 2
    assert "--workers 2: several processes need a PostgreSQL store" in result.stderr
    assert "storage.url" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://gw:{PASSWORD}@127.0.0.1:{free_port()}/gateway"
    result = gateway("serve", "--config", str(pg_config(tmp_path, url)), "--port", "0")
    assert result.returncode == 1
    assert "gateway.toml: storage.url: cannot use postgresql://gw:***@127.0.0.1:" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_password_in_the_query_string_is_not_logged_either(tmp_path: Path) -> None:
    # libpq and asyncpg take the password as a query parameter as well as before the host.
    url = f"postgresql://gw@127.0.0.1:{free_port()}/gateway?sslmode=disable&password={PASSWORD}"
    result = gateway("serve", "--config", str(pg_config(tmp_path, url)), "--port", "0")
    assert result.returncode == 1
    assert "/gateway?sslmode=disable&password=***: cannot connect" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_url_asyncpg_cannot_read_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    url = f"postgresql://gw:{PASSWORD}@127.0.0.1:no-port/gateway"
    result = gateway("serve", "--config", str(pg_config(tmp_path, url)), "--port", "0")
    assert result.returncode == 1
    assert "gateway.toml: storage.url: cannot use postgresql://gw:***@127.0.0.1:no-port" in (
        result.stderr
    )
    assert "not a usable PostgreSQL URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    source = tmp_path / "old.db"
    sqlite3.connect(source).close()
    copy = gateway("migrate-store", "--from", str(source), "--to", url)
    assert copy.returncode == 1
    assert "--to: not a usable PostgreSQL URL" in copy.stderr
    assert "Traceback" not in copy.stderr
    assert PASSWORD not in copy.stderr + copy.stdout


@pytest.mark.postgres
@pytest.mark.timeout(180)  # two processes starting on a loaded machine, then a clean stop
def test_workers_share_one_port_and_stop_on_sigterm(tmp_path: Path, pg_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "gateway", "serve"),
            *("--config", str(pg_config(tmp_path, pg_url))),
            *("--port", str(port), "--workers", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a failed test kills the workers too (they hold the pipes)
    )
    try:
        assert proc.stdout is not None
        assert "(2 workers)" in proc.stdout.readline()
        # Each connection is answered by one of the workers; /metrics says which. Tried until a
        # deadline, not a count: under load one worker may answer hundreds of requests before
        # the other has started listening.
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    seen.add(r.headers["X-Gateway-Process"])
                    body = r.read().decode()
                    assert (
                        f'gateway_process_info{{process="{r.headers["X-Gateway-Process"]}"}}'
                        in body
                    )
            except OSError:
                time.sleep(0.05)  # the workers are still starting
            if len(seen) == 2:
                break
        assert len(seen) == 2, seen
        assert {name.rsplit(":", 1)[1] for name in seen} == {"worker-0", "worker-1"}
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=60)
        assert proc.returncode == 0, errors
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert "Traceback" not in errors
    # Every worker has gone with the parent.
    pids = [int(name.split(":")[1]) for name in seen]
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


# -- migrate-store -----------------------------------------------------------------------------


def subscription(id: str) -> Subscription:
    now = utcnow()
    return Subscription(
        id=id,
        tenant="reseller-a",
        event="booking_update",
        url="https://receiver.example/hook",
        secret="whsec_abc",
        created_at=now,
        updated_at=now,
    )


def booking(n: int) -> NewEvent:
    return NewEvent(
        event="booking_update",
        subject=f"test:b{n}",
        product_id="p1",
        option_id="o1",
        data={"booking": {"id": f"b{n}", "status": "CONFIRMED"}},
        state_key=f"booking:test:b{n}",
    )


async def sqlite_with_work(path: Path) -> dict[str, set[str]]:
    """An SQLite database with deliveries pending, leased, waiting for a retry and delivered, and a
    push not yet processed; returns the delivery ids by what they are."""
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.insert_subscription(subscription("sub-1"))
        await store.insert_push(
            source="channex", kind="booking", payload={"n": 1}, dedupe_key="p1", order_key=None
        )
        [claimed] = await store.claim_pushes(1, 60)
        assert (
            await store.complete_push(
                claimed.id, claimed.lease_token or "", [booking(n) for n in range(4)]
            )
            == 4
        )
        await store.insert_push(
            source="channex", kind="booking", payload={"n": 2}, dedupe_key="p2", order_key=None
        )
        slots = DeliverySlots(3, 16)
        leased = await store.claim_deliveries(slots.room(), 60, ordering_max_wait=3600)
        assert len(leased) == 3
        retrying, delivered, still_leased = leased
        now = time.time()
        for record, state, next_at in (
            (retrying, "pending", now + 3600),
            (delivered, "delivered", None),
        ):
            attempt = AttemptRecord(
                delivery_id=record.id,
                subscription_id=record.subscription_id,
                attempt=1,
                attempted_at=now,
                outcome="delivered" if state == "delivered" else "retry",
                status=200 if state == "delivered" else 500,
                latency_ms=1.0,
            )
            body = b'{"sent": "first"}' if state == "pending" else None
            settlement = Settlement(record, attempt, state, next_attempt_at=next_at, body=body)
            assert await store.settle_deliveries([settlement]) == [True]
        everything = {d.id for d in await store.list_deliveries("sub-1")}
        pending = everything - {d.id for d in leased}
        return {
            "pending": pending,
            "leased": {still_leased.id},
            "retrying": {retrying.id},
            "delivered": {delivered.id},
        }
    finally:
        await store.close()


@pytest.mark.postgres
def test_migrate_store_copies_everything_and_loses_nothing_pending(
    tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "old.db"
    ids = asyncio.run(sqlite_with_work(source))

    result = gateway("migrate-store", "--from", str(source), "--to", pg_url)
    assert result.returncode == 0, result.stderr
    assert "deliveries: 4 row(s)" in result.stdout
    assert "deliveries: 1 lease(s) handed back, due now" in result.stdout

    async def check() -> None:
        store = PostgresStore(pg_url)
        await store.open()
        try:
            got = {d.id: d for d in await store.list_deliveries("sub-1")}
            assert set(got) == set().union(*ids.values())
            [retrying] = ids["retrying"]
            assert got[retrying].state == "pending"
            assert got[retrying].attempts == 1
            assert got[retrying].next_attempt_at > time.time() + 3000  # keeps its schedule
            # ... and the body it was sent with, so the retry sends the same bytes.
            body = await store.pool.fetchval(
                "select body from delivery_bodies where delivery_seq = $1", got[retrying].seq
            )
            assert body == b'{"sent": "first"}'
            [delivered] = ids["delivered"]
            assert got[delivered].state == "delivered"
            # The pending one and the one the old process had leased are due at once, with
            # their webhook-ids (message ids) and event data.
            claimed = await store.claim_deliveries(
                DeliverySlots(10, 16).room(), 60, ordering_max_wait=3600
            )
            assert {d.id for d in claimed} == ids["pending"] | ids["leased"]
            assert all(d.data["booking"]["id"].startswith("b") for d in claimed)
            attempts = await store.list_attempts("sub-1")
            assert len(attempts) == 2
            # The unprocessed push waits here, and a new one continues the sequence.
            [waiting] = await store.list_pushes("accepted")
            assert waiting.payload == {"n": 2}
            claimed_pushes = await store.claim_pushes(5, 60)
            assert [p.id for p in claimed_pushes] == [waiting.id]
            fresh, new = await store.insert_push(
                source="channex", kind="booking", payload={}, dedupe_key="p3", order_key=None
            )
            assert new
            assert (await store.list_pushes())[0].id == fresh.id
        finally:
            await store.close()

    asyncio.run(check())

    # A second copy into a database that has rows is refused, and changes nothing.
    again = gateway("migrate-store", "--from", str(source), "--to", pg_url)
    assert again.returncode == 1
    assert "already has rows in subscriptions" in again.stderr


@pytest.mark.postgres
def test_migrate_store_copies_text_holding_nul(tmp_path: Path, pg_url: str) -> None:
    # SQLite kept NUL in a subscriber's answer and in a PMS booking's notes; PostgreSQL refuses
    # it in text and in the JSON its indexes read: the copy keeps U+FFFD in its place, as the
    # PostgreSQL store does, instead of refusing the whole database.
    source = tmp_path / "old.db"

    async def fill() -> None:
        store = SQLiteStore(source)
        await store.open()
        try:
            await store.insert_subscription(subscription("sub-1"))
            push, _ = await store.insert_push(
                source="channex",
                kind="booking",
                payload={},
                dedupe_key="p1",
                order_key=None,
                lease_seconds=60,
            )
            event = booking(1)
            event.data["booking"]["notes"] = "late \x00 arrival"
            assert await store.complete_push(push.id, push.lease_token or "", [event]) == 1
            [record] = await store.claim_deliveries(
                DeliverySlots(3, 16).room(), 60, ordering_max_wait=3600
            )
            attempt = AttemptRecord(
                delivery_id=record.id,
                subscription_id=record.subscription_id,
                attempt=1,
                attempted_at=time.time(),
                outcome="delivered",
                status=200,
                latency_ms=1.0,
                response="ok\x00",
            )
            assert await store.settle_deliveries([Settlement(record, attempt, "delivered")]) == [
                True
            ]
        finally:
            await store.close()

    asyncio.run(fill())
    result = gateway("migrate-store", "--from", str(source), "--to", pg_url)
    assert result.returncode == 0, result.stderr

    async def check() -> None:
        store = PostgresStore(pg_url)
        await store.open()
        try:
            [(_, attempt, _)] = await store.list_attempts("sub-1")
            assert attempt.response == "ok\ufffd"
            latest = await store.latest_bookings(BookingFilter())
            assert [b.booking["notes"] for b in latest] == ["late \ufffd arrival"]
        finally:
            await store.close()

    asyncio.run(check())


def test_migrate_store_refuses_what_is_not_postgresql(tmp_path: Path) -> None:
    source = tmp_path / "x.db"
    sqlite3.connect(source).close()
    result = gateway("migrate-store", "--from", str(source), "--to", f"mysql://u:{PASSWORD}@h/db")
    assert result.returncode == 2
    assert "must be a postgresql:// URL" in result.stderr
    assert PASSWORD not in result.stderr
