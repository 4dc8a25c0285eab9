"""Fault injection, crashes (issue 12): ``kill -9`` of a real ``gateway serve`` at 20 random moments
while pushes come in and deliveries go out. Afterwards every push answered 200 has been delivered at
least once, a message sent twice kept its webhook-id, and each booking's updates reached the
subscriber in the order they happened.

Starting ``gateway serve`` costs seconds of imports on a busy 2-core machine, twenty times over. So
the gateways are forked from a process that has imported the gateway once: each child runs the
``gateway serve`` command itself (``gateway.cli``, its own event loop, its own database
connections) and is killed with SIGKILL like any process. The random moments come from a seeded
generator; the seed is in the failure message.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.store import SQLiteStore
from tests.conftest import AUTH_A, REPO, TENANT_A
from tests.receivers import Answer, Receiver, free_port, wait_until
from tests.test_delivery_crash import write_config

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

KILLS = 20
BOOKINGS = 6
FIRST_BOOKING = 91000000

# Imports the gateway once, then forks a `gateway serve` per line read (its arguments); prints
# each child's pid. Children are reaped by the kernel (SIGCHLD ignored), so a killed one vanishes.
FORK_SERVER = r"""
import os, signal, sys
import gateway.cli

log = sys.argv[1]
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(out, 1)
        os.dup2(out, 2)
        code = 0
        try:
            gateway.cli.cli.main(args=line.split(), prog_name="gateway")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
"""


class ForkServer:
    def __init__(self, log: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER, str(log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def serve(self, config: Path, port: int) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        args = f"serve --config {config} --host 127.0.0.1 --port {port}\n"
        self.process.stdin.write(args.encode())
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self.process.wait(10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Serving:
    """The gateway of the moment: senders and the subscriber reach it here."""

    pid: int = 0
    url: str = ""
    restarts: int = 0


async def start_gateway(forks: ForkServer, config: Path, http: aiohttp.ClientSession) -> Serving:
    port = free_port()
    pid = forks.serve(config, port)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert alive(pid), "gateway serve exited"
        try:
            async with http.get(url + "/healthz") as response:
                if response.status == 200:
                    return Serving(pid, url)
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, "gateway serve did not start"
        await asyncio.sleep(0.02)


async def kill_9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    while alive(pid):
        await asyncio.sleep(0.01)


def update(booking: int, n: int) -> list[dict[str, Any]]:
    """Beds24 version 2 push: update ``n`` of ``booking`` (a later modifiedTime, its own notes)."""
    sample = REPO / "plugins/beds24/samples/beds24-v2-booking-1.json"
    push: list[dict[str, Any]] = copy.deepcopy(json.loads(sample.read_text("utf-8")))
    push[0]["booking"].update(
        id=booking,
        comments=f"update {n}",
        modifiedTime=f"2030-01-01T00:{n // 60:02d}:{n % 60:02d}Z",
    )
    return push


@dataclass
class Sender:
    """One booking's PMS: sends its updates one after the other, each until it is answered 200
    (a dead gateway, a refused connection or a 503 is tried again, as a PMS does)."""

    booking: int
    acknowledged: list[int] = field(default_factory=list)

    async def run(
        self, http: aiohttp.ClientSession, serving: Serving, stop: asyncio.Event, rng: random.Random
    ) -> None:
        n = 0
        while not stop.is_set():
            body = update(self.booking, n)
            while True:
                try:
                    async with http.post(
                        serving.url + "/ingest/beds24", json=body, headers={"X-Gateway-Token": "t"}
                    ) as response:
                        await response.read()
                        if response.status == 200:
                            break
                        assert response.status == 503, await response.text()
                except (aiohttp.ClientError, TimeoutError):
                    pass  # killed under us: the push is sent again
                await asyncio.sleep(0.05)
            self.acknowledged.append(n)
            n += 1
            await asyncio.sleep(rng.uniform(0.0, 0.3))


def booking_of(body: dict[str, Any]) -> tuple[int, int]:
    """(booking id, update number) of a delivered booking_update."""
    booking = body["booking"]
    return int(booking["supplierReference"]), int(booking["notes"].removeprefix("update "))


async def every_acknowledged_push_delivered(
    senders: Any, receiver: Receiver, seed: int, timeout: float
) -> set[tuple[int, int]]:
    """Wait until each push a sender was told 200 for has reached the receiver with a 200;
    return those (booking, update number) pairs."""
    wanted = {(s.booking, n) for s in senders for n in s.acknowledged}

    def delivered() -> set[tuple[int, int]]:
        return {booking_of(r.json()) for r in receiver.requests if r.status == 200}

    await wait_until(
        lambda: wanted <= delivered(),
        f"every acknowledged push to be delivered (seed {seed})",
        timeout=timeout,
    )
    return wanted


async def stop_gracefully(pid: int) -> None:
    os.kill(pid, signal.SIGINT)
    while alive(pid):
        await asyncio.sleep(0.02)


async def test_kill_9_at_random_moments_loses_nothing_and_keeps_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    seed = int(os.environ.get("FAULTS_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    config = write_config(tmp_path)
    log = tmp_path / "gateway.log"
    receiver.decide = lambda request, index: Answer(delay=rng.uniform(0.0, 0.05))
    forks = ForkServer(log)
    senders = [Sender(FIRST_BOOKING + b) for b in range(BOOKINGS)]
    serving = Serving()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            first = await start_gateway(forks, config, http)
            serving.pid, serving.url = first.pid, first.url
            async with http.post(
                serving.url + "/octo/webhooks",
                json={"url": receiver.url(), "event": "booking_update"},
                headers=AUTH_A,
            ) as response:
                assert response.status == 200, await response.text()

            stop = asyncio.Event()
            load = [asyncio.create_task(s.run(http, serving, stop, rng)) for s in senders]
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.05, 0.6))
                await kill_9(serving.pid)
                # Deliveries in flight now are answered to nobody: they are re-sent.
                restarted = await start_gateway(forks, config, http)
                serving.pid, serving.url = restarted.pid, restarted.url
                serving.restarts += 1
            stop.set()
            await asyncio.gather(*load)

            wanted = await every_acknowledged_push_delivered(senders, receiver, seed, timeout=60)
            await stop_gracefully(serving.pid)
    finally:
        if serving.pid and alive(serving.pid):
            os.kill(serving.pid, signal.SIGKILL)
        forks.close()

    where = f"(seed {seed}, {serving.restarts} kills)"
    assert serving.restarts == KILLS
    assert min(len(s.acknowledged) for s in senders) >= 3, f"too little load {where}"
    ids: dict[tuple[int, int], set[str]] = {}
    uuids: dict[int, set[str]] = {}
    order: dict[int, list[int]] = {}
    for request in receiver.requests:
        booking, n = booking_of(request.json())
        ids.setdefault((booking, n), set()).add(request.webhook_id)
        uuids.setdefault(booking, set()).add(request.json()["booking"]["uuid"])
        order.setdefault(booking, []).append(n)
    # Nothing but what was acknowledged (an update is only sent once the previous one was).
    assert set(ids) <= wanted | {(s.booking, len(s.acknowledged)) for s in senders}, where
    # A message sent more than once kept its webhook-id; no two messages share one.
    assert all(len(found) == 1 for found in ids.values()), where
    assert len({i for found in ids.values() for i in found}) == len(ids), where
    assert all(len(found) == 1 for found in uuids.values()), where
    # Each booking's updates arrived in the order they happened (a re-sent one repeats in place).
    for booking, seen in order.items():
        assert seen == sorted(seen), f"booking {booking} out of order {where}: {seen}"

    store = SQLiteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        assert await store.list_pushes(state="accepted") == [], where
        assert await store.list_pushes(state="failed") == [], where
        [webhook] = await store.list_subscriptions(str(TENANT_A["name"]))
        states = {d.state for d in await store.list_deliveries(webhook.id, limit=10_000)}
        assert states == {"delivered"}, where
    finally:
        await store.close()
    assert "Traceback" not in log.read_text("utf-8", "replace"), where
