"""Two gateway apps on one database, as two processes behind a load balancer would be: what one is
told reaches the other. On SQLite (two apps on one file) and on PostgreSQL (two pools)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.app import create_app
from gateway.appkeys import deliverer_key, store_key
from gateway.config import GatewayConfig
from tests.conftest import AUTH_A
from tests.fake_pms import eventually
from tests.receivers import Receiver, booking_event, emit, subscribe

pytestmark = pytest.mark.both_stores


async def test_a_subscription_changed_through_one_process_is_used_by_the_other(
    aiohttp_client: Any,
    fast_config: Callable[..., GatewayConfig],
    receiver: Receiver,
) -> None:
    config = fast_config()
    first = await aiohttp_client(create_app(config))
    second = await aiohttp_client(create_app(config))
    webhook = await subscribe(first, receiver.url("/before"))

    async def send_through_second(n: int) -> None:
        await emit(second.app[store_key], [booking_event(f"test:b{n}", n)])
        second.app[deliverer_key].wake()

    await send_through_second(0)
    await receiver.wait_for(1, path="/before")
    # The first process changes the URL; the second, which cached the subscription when it
    # delivered, sends to the new one once its cache entry expires (1 s).
    changed = await first.patch(
        f"/octo/webhooks/{webhook['id']}", json={"url": receiver.url("/after")}, headers=AUTH_A
    )
    assert changed.status == 200, await changed.text()
    sent = 1

    async def reached_new_url() -> bool:
        nonlocal sent
        if receiver.to("/after"):
            return True
        await send_through_second(sent)
        sent += 1
        return False

    await eventually(reached_new_url, timeout=20, interval=0.25)
    [after] = receiver.to("/after")[:1]
    assert after.json()["booking"]["notes"].startswith("update ")
