"""Failover on PostgreSQL: two real ``gateway serve`` processes on one database take pushes behind
a (simulated) load balancer; one is killed with SIGKILL mid-load and the balancer sends its senders
to the other. Every push answered 200, by either process, is delivered; a message sent twice kept
its webhook-id; each booking's updates reach the subscriber in the order they happened.

The survivor takes over what the dead process held when its leases expire (a push's after
``ingest.lease_seconds``, a delivery's after ``2 x delivery.timeout + 5 s``).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.store.postgres import PostgresStore
from tests.conftest import AUTH_A, TENANT_A
from tests.receivers import Answer, Receiver, wait_until
from tests.test_delivery_crash import write_config
from tests.test_faults_kill import (
    ForkServer,
    Sender,
    Serving,
    alive,
    booking_of,
    every_acknowledged_push_delivered,
    kill_9,
    start_gateway,
    stop_gracefully,
)

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.timeout(240)]

BOOKINGS = 8
FIRST_BOOKING = 92000000


def postgres_config(tmp_path: Path, url: str) -> Path:
    path = write_config(tmp_path)
    text = path.read_text("utf-8")
    old = f'path = "{tmp_path / "gateway.db"}"'
    assert old in text
    path.write_text(text.replace(old, f'url = "{url}"'), "utf-8")
    return path


async def test_two_processes_one_killed_lose_nothing_and_keep_order(
    tmp_path: Path, receiver: Receiver, pg_url: str
) -> None:
    seed = int(os.environ.get("FAULTS_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    config = postgres_config(tmp_path, pg_url)
    log = tmp_path / "gateway.log"
    receiver.decide = lambda request, index: Answer(delay=rng.uniform(0.0, 0.05))
    forks = ForkServer(log)
    senders = [Sender(FIRST_BOOKING + b) for b in range(BOOKINGS)]
    doomed, survivor = Serving(), Serving()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for serving in (doomed, survivor):
                started = await start_gateway(forks, config, http)
                serving.pid, serving.url = started.pid, started.url
            async with http.post(
                doomed.url + "/octo/webhooks",
                json={"url": receiver.url(), "event": "booking_update"},
                headers=AUTH_A,
            ) as response:
                assert response.status == 200, await response.text()

            # Half the senders reach one process, half the other.
            stop = asyncio.Event()
            load = [
                asyncio.create_task(s.run(http, doomed if i % 2 else survivor, stop, rng))
                for i, s in enumerate(senders)
            ]
            await wait_until(
                lambda: min(len(s.acknowledged) for s in senders) >= 2, "load on both processes"
            )
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await kill_9(doomed.pid)
            doomed.url = survivor.url  # the balancer notices and sends everything to the survivor
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*load)

            wanted = await every_acknowledged_push_delivered(senders, receiver, seed, timeout=90)
            await stop_gracefully(survivor.pid)
    finally:
        for serving in (doomed, survivor):
            if serving.pid and alive(serving.pid):
                os.kill(serving.pid, signal.SIGKILL)
        forks.close()

    where = f"(seed {seed})"
    assert min(len(s.acknowledged) for s in senders) >= 3, f"too little load {where}"
    ids: dict[tuple[int, int], set[str]] = {}
    order: dict[int, list[int]] = {}
    for request in receiver.requests:
        booking, n = booking_of(request.json())
        ids.setdefault((booking, n), set()).add(request.webhook_id)
        order.setdefault(booking, []).append(n)
    assert set(ids) <= wanted | {(s.booking, len(s.acknowledged)) for s in senders}, where
    # A message sent more than once kept its webhook-id; no two messages share one.
    assert all(len(found) == 1 for found in ids.values()), where
    assert len({i for found in ids.values() for i in found}) == len(ids), where
    # Each booking's updates arrived in the order they happened (a re-sent one repeats in place).
    for booking, seen in order.items():
        assert seen == sorted(seen), f"booking {booking} out of order {where}: {seen}"

    store = PostgresStore(pg_url)
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
