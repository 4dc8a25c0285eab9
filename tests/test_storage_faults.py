"""Storage faults (issue 12, finding 4): a push that can't be stored answers 503 with Retry-After
and an OCTO error body within seconds; the fault is logged once per interval, not per request;
/readyz says what is wrong while /healthz stays up; once the fault clears, pushes are accepted and
nothing answered 200 is lost.

Faults, all real SQLite failures on a real file:
- database locked: another process holds ``BEGIN EXCLUSIVE`` on the file;
- disk full: ``PRAGMA max_page_count`` on the gateway's writer connection caps the file at its
  current size (SQLite then fails writes with SQLITE_FULL, as on a full disk);
- read-only file: the immutable attribute (``chattr +i``) on the database and its WAL while the
  gateway runs; unlike chmod it stops writes through files already open, and for root too. It
  needs CAP_LINUX_IMMUTABLE and a file system that has it (ext4, xfs, btrfs); skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.appkeys import store_key, workers_key
from gateway.ratelog import RateLimitedLog
from gateway.store import SQLiteStore
from gateway.store.errors import StorageUnavailable
from tests.conftest import AUTH_A
from tests.fake_pms import Gateways, Harness, beds24_booking, eventually
from tests.octo_schema import load_fixture
from tests.receivers import Receiver, wait_until_async
from tests.test_delivery_crash import Gateway, beds24_push, write_config

# Far above write_timeout (1 s here), far below the 30 s a locked database used to cost a push.
ANSWER_WITHIN = aiohttp.ClientTimeout(total=10)
STORE_LOG = "gateway.store.sqlite.base"


async def start(gateways: Gateways) -> Harness:
    return await gateways.start(
        storage={"write_timeout": 1},
        # A push whose processing failed for lack of storage is taken over soon after.
        ingest={"lease_seconds": 2, "retry_base": 0.05, "retry_max": 0.2, "poll_interval": 0.05},
    )


def booking_push(gw: Harness, n: int, notes: str = "") -> dict[str, Any]:
    """A Beds24 version 2 push of booking 82279106 + n (the PMS knows it too)."""
    booking_id = 82279106 + n
    gw.pms.beds24_bookings[str(booking_id)] = beds24_booking(id=booking_id, comments=notes)
    item: dict[str, Any] = load_fixture("beds24-v2-booking-1.json")[0]
    return {**item, "booking": {**item["booking"], "id": booking_id, "comments": notes}}


async def push(gw: Harness, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    response = await gw.client.post(
        "/ingest/beds24",
        json=body,
        headers={"X-Gateway-Token": "btok"},
        timeout=ANSWER_WITHIN,
    )
    return response.status, dict(response.headers), await response.json()


def assert_unavailable(answer: tuple[int, dict[str, str], dict[str, Any]]) -> None:
    status, headers, body = answer
    assert status == 503, body
    assert int(headers["Retry-After"]) > 0
    assert body["error"] == "SERVICE_UNAVAILABLE"
    assert "storage unavailable" in body["errorMessage"]


async def readiness(gw: Harness) -> tuple[int, dict[str, Any]]:
    response = await gw.client.get("/readyz", timeout=ANSWER_WITHIN)
    return response.status, await response.json()


async def ready_again(gw: Harness) -> None:
    async def ready() -> bool:
        return (await readiness(gw))[0] == 200

    await eventually(ready, timeout=15)


def fault_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == STORE_LOG and r.levelno >= logging.ERROR and "storage fault" in r.message
    ]


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """One line for the fault (the interval is a minute), no traceback, no 500."""
    assert len(fault_lines(caplog)) == 1, [r.message for r in fault_lines(caplog)]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not [r for r in caplog.records if "unhandled" in r.message]


async def accepted_and_delivered(gw: Harness, ids: set[str], bookings: int) -> None:
    """Every push answered 200 is stored and processed, and its booking reached the subscriber."""
    for push_id in ids:
        await gw.wait_state(push_id, "processed", timeout=15)
    await gw.settled(timeout=15)
    got = {booking["supplierReference"] for booking in gw.bookings.bookings()}
    assert got == {str(82279106 + n) for n in range(bookings)}


# -- database locked by another process ------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextlib.asynccontextmanager
async def locked(path: Path) -> AsyncIterator[None]:
    """Another process holds the database's write lock until the block ends."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLD_LOCK,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"locked\n"
        yield
    finally:
        holder.stdin.write(b"done\n")
        await holder.stdin.drain()
        assert await asyncio.wait_for(holder.wait(), 10) == 0


async def test_a_database_locked_by_another_process_answers_503_at_once(
    gateways: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start(gateways)
    first = await push(gw, booking_push(gw, 0))
    assert first[0] == 200
    ok = {first[2]["id"]}

    async with locked(gw.db_path):
        answers = await asyncio.gather(*(push(gw, booking_push(gw, n)) for n in range(1, 21)))
        for answer in answers:
            assert_unavailable(answer)
        assert (
            "locked" in answers[0][2]["errorMessage"]
            or "within 1 s" in answers[0][2]["errorMessage"]
        )
        status, body = await readiness(gw)
        assert status == 503
        assert body["checks"]["storage"] != "ok"
        assert body["checks"]["push-processor"] == "ok"
        assert (await gw.client.get("/healthz")).status == 200
        assert_quiet(caplog)

    # The senders try again: every push is taken now.
    for n in range(1, 21):
        status, _, body = await push(gw, booking_push(gw, n))
        assert status == 200, body
        ok.add(body["id"])
    await ready_again(gw)
    assert any("storage recovered" in r.message for r in caplog.records)
    await accepted_and_delivered(gw, ok, 21)
    assert len(fault_lines(caplog)) == 1


# -- disk full -------------------------------------------------------------------------------


async def on_writer(store: SQLiteStore, sql: str) -> Any:
    """Run one statement on the store's own writer connection, on its writer thread."""

    def run() -> Any:
        return store._wdb.execute(sql).fetchone()

    return await asyncio.get_running_loop().run_in_executor(store._writer, run)


async def test_a_full_disk_answers_503_and_recovers(
    gateways: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start(gateways)
    store = gw.client.app[store_key]
    assert isinstance(store, SQLiteStore)
    ok: set[str] = set()
    status, _, body = await push(gw, booking_push(gw, 0))
    assert status == 200
    ok.add(body["id"])
    await gw.settled()

    [pages] = await on_writer(store, "PRAGMA page_count")
    await on_writer(store, f"PRAGMA max_page_count = {pages}")
    # Bodies larger than a page need new pages: the file can't grow, as on a full disk.
    refused = []
    for n in range(1, 11):
        answer = await push(gw, booking_push(gw, n, notes="x" * 20_000))
        assert answer[0] in (200, 503), answer
        if answer[0] == 200:
            ok.add(answer[2]["id"])
        else:
            assert_unavailable(answer)
            assert "full" in answer[2]["errorMessage"]
            refused.append(n)
    assert len(refused) >= 8  # a page or two may have been free
    status, ready = await readiness(gw)
    assert status == 503
    assert "full" in ready["checks"]["storage"]
    assert_quiet(caplog)

    await on_writer(store, "PRAGMA max_page_count = 4294967294")  # space freed
    for n in refused:
        status, _, body = await push(gw, booking_push(gw, n, notes="x" * 20_000))
        assert status == 200, body
        ok.add(body["id"])
    await ready_again(gw)
    await accepted_and_delivered(gw, ok, 11)


# -- read-only file --------------------------------------------------------------------------


def set_immutable(paths: list[Path], on: bool) -> None:
    subprocess.run(
        ["chattr", "+i" if on else "-i", *map(str, paths)],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def immutable_supported(tmp_path: Path) -> Iterator[None]:
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    try:
        set_immutable([probe], True)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no immutable attribute here: {exc.stderr.decode().strip()}")
    set_immutable([probe], False)
    yield


async def test_a_read_only_database_answers_503_and_recovers(
    gateways: Gateways, caplog: pytest.LogCaptureFixture, immutable_supported: None
) -> None:
    gw = await start(gateways)
    ok: set[str] = set()
    status, _, body = await push(gw, booking_push(gw, 0))
    assert status == 200
    ok.add(body["id"])
    await gw.settled()

    # Not the -shm file: SQLite maps it into memory, and a write to an immutable map is SIGBUS.
    files = [gw.db_path, gw.db_path.with_name(gw.db_path.name + "-wal")]
    set_immutable(files, True)
    try:
        answers = [await push(gw, booking_push(gw, n)) for n in range(1, 6)]
        for answer in answers:
            assert_unavailable(answer)
        status, ready = await readiness(gw)
        assert status == 503
        assert ready["checks"]["storage"].startswith("not writable")
        assert_quiet(caplog)
    finally:
        set_immutable(files, False)

    for n in range(1, 6):
        status, _, body = await push(gw, booking_push(gw, n))
        assert status == 200, body
        ok.add(body["id"])
    await ready_again(gw)
    await accepted_and_delivered(gw, ok, 6)


# -- /readyz ---------------------------------------------------------------------------------


async def test_readyz_names_a_worker_that_stopped(gateways: Gateways) -> None:
    gw = await gateways.start(subscribe=False)
    status, body = await readiness(gw)
    assert status == 200
    assert body == {
        "status": "ready",
        "checks": {
            "storage": "ok",
            "push-processor": "ok",
            "delivery-worker": "ok",
            "maintenance": "ok",
        },
    }
    processor = gw.client.app[workers_key]["push-processor"]
    processor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await processor
    status, body = await readiness(gw)
    assert status == 503
    assert body["error"] == "SERVICE_UNAVAILABLE"
    assert body["checks"]["push-processor"] == "stopped"
    assert body["checks"]["storage"] == "ok"
    assert "push-processor: stopped" in body["errorMessage"]
    assert (await gw.client.get("/healthz")).status == 200


# -- the store and the log on their own ------------------------------------------------------


async def test_a_lock_fails_a_whole_batch_of_writes_once_not_once_per_write(
    tmp_path: Path,
) -> None:
    """Twenty writes queued behind another process's lock fail together after one busy timeout,
    not one after the other (twenty busy timeouts)."""
    store = SQLiteStore(tmp_path / "gateway.db", busy_timeout=0.5)
    await store.open()
    try:
        async with locked(tmp_path / "gateway.db"):

            async def insert(n: int) -> BaseException | None:
                try:
                    await store.insert_push(
                        source="test", kind="k", payload={"n": n}, dedupe_key=None, order_key=None
                    )
                except StorageUnavailable as exc:
                    return exc
                return None

            async with asyncio.timeout(5):  # one after the other: 20 x 0.5 s
                failures = await asyncio.gather(*(insert(n) for n in range(20)))
        assert all(isinstance(f, StorageUnavailable) for f in failures)
        assert "locked" in str(failures[0])
        await store.check_writable()  # raises: the fault was just seen
    except StorageUnavailable as exc:
        assert "locked" in exc.reason
    else:
        raise AssertionError("check_writable passed right after a fault")
    finally:
        await store.close()


def test_a_lasting_fault_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    faults = RateLimitedLog(logging.getLogger("test.faults"), interval=60, clock=lambda: now[0])
    logged = []
    for _ in range(100):  # 100 failures within 10 s
        logged.append(faults.fault("write", "disk full"))
        now[0] += 0.1
    assert logged == [True] + [False] * 99
    now[0] = 60.5
    assert faults.fault("write", "disk full")
    assert faults.fault("other", "a different fault is its own line")
    faults.resolved("write", "recovered")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "disk full",
        "disk full (99 more failures since the last report)",
        "a different fault is its own line",
        "recovered (after 101 failures over 60 s)",
    ]


def test_a_fault_that_comes_and_goes_still_gives_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    faults = RateLimitedLog(logging.getLogger("test.faults"), interval=60, clock=lambda: now[0])
    for _ in range(50):  # fails, works, fails, works... within a minute
        faults.fault("write", "disk full")
        faults.resolved("write", "recovered")
        now[0] += 1
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["disk full", "recovered (after 1 failure over 0 s)"]
    now[0] = 61
    faults.fault("write", "disk full")  # a minute after the first line
    assert caplog.records[-1].getMessage() == "disk full (49 more failures since the last report)"


# -- a real disk filling up under a real `gateway serve` ---------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs of our own (needs CAP_SYS_ADMIN; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``."""
    ballast = disk / "ballast"
    # Unbuffered: a buffered file keeps the bytes of a short last write and fails again on close
    # (whether it does depends on how the free space divides into chunks, so on the database's size).
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    return ballast


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_a_real_full_disk_under_gateway_serve(
    small_disk: Path, tmp_path: Path, receiver: Receiver
) -> None:
    config = write_config(small_disk)
    config.write_text(
        config.read_text().replace("[storage]\n", "[storage]\nwrite_timeout = 1\n", 1)
    )
    log = tmp_path / "gateway.log"
    gateway = Gateway(config, log)
    acknowledged: set[int] = set()
    try:
        async with aiohttp.ClientSession(timeout=ANSWER_WITHIN) as http:
            await gateway.ready(http)
            async with http.post(
                gateway.url + "/octo/webhooks",
                json={"url": receiver.url(), "event": "booking_update"},
                headers=AUTH_A,
            ) as response:
                assert response.status == 200

            async def send(n: int) -> int:
                body = beds24_push(n)
                body[0]["booking"]["comments"] = "x" * 20_000
                async with http.post(
                    gateway.url + "/ingest/beds24", json=body, headers={"X-Gateway-Token": "t"}
                ) as response:
                    answer = await response.json()
                    if response.status == 503:
                        assert int(response.headers["Retry-After"]) > 0
                        assert answer["error"] == "SERVICE_UNAVAILABLE"
                    else:
                        assert response.status == 200, answer
                        acknowledged.add(n)
                    return response.status

            assert await send(0) == 200
            ballast = fill(small_disk)
            statuses = [await send(n) for n in range(1, 80)]
            assert (
                503 in statuses
            )  # 80 x 20 kB (and their events) can't fit in the WAL's spare room
            first_refused = statuses.index(503) + 1
            assert set(statuses[first_refused:]) == {503}
            async with http.get(gateway.url + "/readyz") as response:
                assert response.status == 503
                assert "full" in (await response.json())["checks"]["storage"]

            ballast.unlink()  # the operator frees space
            for n in range(first_refused, 80):  # the senders try again
                assert await send(n) == 200

            def delivered() -> set[int]:
                return {
                    int(r.json()["booking"]["supplierReference"]) - 82279106
                    for r in receiver.requests
                    if r.status == 200
                }

            await wait_until_async(
                lambda: _true(acknowledged <= delivered()), "every push answered 200 delivered"
            )
            assert gateway.interrupt() == 0
    finally:
        gateway.close()
    text = log.read_text("utf-8", "replace")
    assert "Traceback" not in text
    assert text.count("storage fault: cannot write") == 1


async def _true(value: bool) -> bool:
    return value
