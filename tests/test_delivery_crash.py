"""Nothing acknowledged is lost, nothing is sent under a new id: a stop mid-delivery, a graceful
stop, and a real ``kill -9`` of ``gateway serve``."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import aiohttp

from gateway.app import create_app
from gateway.appkeys import deliverer_key, store_key
from gateway.config import GatewayConfig
from gateway.store import SQLiteStore
from tests.conftest import AUTH_A, REPO, TENANT_A
from tests.receivers import (
    Answer,
    Receiver,
    booking_event,
    emit,
    free_port,
    subscribe,
    wait_until_async,
)


async def states(path: Path) -> list[tuple[str, str]]:
    """(webhook-id, state) of every delivery, read with a store of its own."""
    store = SQLiteStore(path)
    await store.open()
    try:
        found: list[tuple[str, str]] = []
        for subscription in await store.list_subscriptions(str(TENANT_A["name"])):
            found += [(d.id, d.state) for d in await store.list_deliveries(subscription.id)]
        return found
    finally:
        await store.close()


async def test_stop_mid_delivery_then_restart_resends_with_the_same_id(
    aiohttp_client: Any, fast_config: Callable[..., GatewayConfig], receiver: Receiver
) -> None:
    settings = fast_config(timeout=10, shutdown_grace=0.2)
    first = await aiohttp_client(create_app(settings))
    webhook = await subscribe(first, receiver.url())
    receiver.script = [Answer(hang=True)]
    await emit(first.app[store_key], [booking_event()])
    first.app[deliverer_key].wake()
    [hung] = await receiver.wait_for(1)

    await first.close()  # the grace period runs out with the request still in flight
    assert await states(settings.storage.path) == [(hung.webhook_id, "pending")]

    second = await aiohttp_client(create_app(settings))
    requests = await receiver.wait_for(2)
    assert requests[1].webhook_id == hung.webhook_id
    assert requests[1].body == hung.body

    async def delivered() -> bool:
        found = await second.app[store_key].list_deliveries(webhook["id"], state="delivered")
        return len(found) == 1

    await wait_until_async(delivered, "the re-sent message to be delivered")
    assert len(receiver.requests) == 2


async def test_graceful_stop_lets_in_flight_deliveries_finish(
    aiohttp_client: Any, fast_config: Callable[..., GatewayConfig], receiver: Receiver
) -> None:
    settings = fast_config(timeout=10, shutdown_grace=10)
    client = await aiohttp_client(create_app(settings))
    await subscribe(client, receiver.url())
    receiver.script = [Answer(delay=0.3)]
    await emit(client.app[store_key], [booking_event()])
    client.app[deliverer_key].wake()
    [got] = await receiver.wait_for(1)
    await client.close()
    assert await states(settings.storage.path) == [(got.webhook_id, "delivered")]


# -- kill -9 ---------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[storage]
path = {json.dumps(str(tmp_path / "gateway.db"))}

[plugins]
dir = {json.dumps(str(REPO / "plugins"))}

[templates]
dir = {json.dumps(str(REPO / "templates"))}

[delivery]
allow_private_targets = true
retry_schedule = [0.2, 0.5, 1, 1, 1, 1, 1, 1, 1, 1]
timeout = 1
connect_timeout = 0.5
poll_interval = 0.1
shutdown_grace = 1

[ingest]
lease_seconds = 2
poll_interval = 0.2

[[api_keys]]
name = {json.dumps(TENANT_A["name"])}
key = {json.dumps(TENANT_A["key"])}
products = ["*"]

[sources.beds24]
token = "t"
api_url = "sandbox"

[sandbox]
enabled = true

# The samples' stays are in 2020-2021: keep their state through every restart's maintenance round.
[retention]
state_days_after_stay = 36500
""",
        encoding="utf-8",
    )
    return path


class Gateway:
    """``python -m gateway serve`` in a subprocess, output to files (never a full pipe)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log: IO[bytes] = log.open("ab")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "serve", "--config", str(config)),
                *("--host", "127.0.0.1", "--port", str(self.port)),
            ],
            cwd=REPO,
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    async def ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 15
        while True:
            assert self.process.poll() is None, "gateway serve exited"
            try:
                async with http.get(self.url + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "gateway serve did not start"
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no cleanup of any kind
        self.process.wait(10)

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(15)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def beds24_push(n: int) -> list[dict[str, Any]]:
    doc = json.loads((REPO / "plugins/beds24/samples/beds24-v2-booking-1.json").read_text("utf-8"))
    push: list[dict[str, Any]] = copy.deepcopy(doc)
    push[0]["booking"]["id"] = 82279106 + n
    return push


async def test_kill_9_mid_delivery_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    config = write_config(tmp_path)
    log = tmp_path / "gateway.log"
    gateways: list[Gateway] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            first = Gateway(config, log)
            gateways.append(first)
            await first.ready(http)
            async with http.post(
                first.url + "/octo/webhooks",
                json={"url": receiver.url(), "event": "booking_update"},
                headers=AUTH_A,
            ) as response:
                assert response.status == 200, await response.text()
                webhook = await response.json()

            receiver.default = Answer(hang=True)
            count = 5
            for n in range(count):
                async with http.post(
                    first.url + "/ingest/beds24",
                    json=beds24_push(n),
                    headers={"X-Gateway-Token": "t"},
                ) as response:
                    assert response.status == 200, await response.text()  # acknowledged

            await receiver.wait_for(1)
            first.kill()
            before_kill = len(receiver.requests)
            receiver.release()  # from now on every request is answered 200 at once

            second = Gateway(config, log)
            gateways.append(second)
            await second.ready(http)

            async def all_delivered() -> bool:
                async with http.get(
                    f"{second.url}/octo/webhooks/{webhook['id']}/deliveries?state=delivered",
                    headers=AUTH_A,
                ) as response:
                    listed = await response.json()
                return len({a["messageId"] for a in listed}) == count

            await wait_until_async(all_delivered, "every acknowledged event to be delivered")
            hung, after = receiver.requests[:before_kill], receiver.requests[before_kill:]
            delivered = [r for r in after if r.status == 200]
            assert len({r.json()["booking"]["uuid"] for r in delivered}) == count
            assert {r.webhook_id for r in delivered} == {r.webhook_id for r in after}
            # What was in flight when the process died is sent again under the same webhook-id.
            assert {r.webhook_id for r in hung} <= {r.webhook_id for r in delivered}
            assert second.interrupt() == 0
    finally:
        for gateway in gateways:
            gateway.close()
        receiver.release()
    assert "Traceback" not in log.read_text("utf-8", "replace")
    assert (
        sorted(state for _, state in await states(tmp_path / "gateway.db")) == ["delivered"] * count
    )
