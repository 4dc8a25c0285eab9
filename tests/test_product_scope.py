"""A key's products scope its subscriptions: narrowing them in gateway.toml narrows what the
subscriptions it made before receive, from the next start on (gateway/scopes.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.app import create_app
from gateway.appkeys import store_key
from gateway.config import ApiKey, GatewayConfig
from gateway.scopes import products_by_tenant
from tests.receivers import booking_event, emit, subscribe
from tests.tenants import ADMIN, AUTH_A, TENANT_A, TENANT_B

pytestmark = pytest.mark.both_stores

LOOPBACK = {"allow_private_targets": True}


async def test_narrowing_a_keys_products_narrows_its_subscriptions_at_the_next_start(
    aiohttp_client: Any, make_config: Callable[..., GatewayConfig]
) -> None:
    first = await aiohttp_client(create_app(make_config(delivery=LOOPBACK), workers=False))
    webhook = await subscribe(first, "http://127.0.0.1:9/hook")
    assert webhook["products"] == ["*"]
    await first.close()

    narrowed = make_config(
        delivery=LOOPBACK, api_keys=[{**TENANT_A, "products": ["room-9"]}, TENANT_B, ADMIN]
    )
    second = await aiohttp_client(create_app(narrowed, workers=False))
    shown = await second.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)
    assert (await shown.json())["products"] == ["room-9"]
    store = second.app[store_key]
    elsewhere = booking_event("scope:other-room")
    assert elsewhere.product_id != "room-9"
    assert await emit(store, [elsewhere]) == 0  # no longer this reseller's product
    mine = booking_event("scope:room-9").model_copy(update={"product_id": "room-9"})
    assert await emit(store, [mine]) == 1


def test_keys_sharing_a_tenant_name_share_their_products() -> None:
    keys = make_keys(["a", "b"], ["b", "c"])
    assert products_by_tenant(keys) == {"t": ["a", "b", "c"]}
    assert products_by_tenant(make_keys(["a"], ["*"])) == {"t": ["*"]}


def make_keys(*scopes: list[str]) -> list[ApiKey]:
    return [
        ApiKey(name="t", key=f"key-{n}-0123456789", products=products)
        for n, products in enumerate(scopes)
    ]


async def test_a_tenant_whose_key_is_removed_receives_nothing_until_it_is_back(
    aiohttp_client: Any, make_config: Callable[..., GatewayConfig]
) -> None:
    first = await aiohttp_client(create_app(make_config(delivery=LOOPBACK), workers=False))
    webhook = await subscribe(first, "http://127.0.0.1:9/hook")
    await first.close()

    removed = make_config(delivery=LOOPBACK, api_keys=[TENANT_B, ADMIN])
    second = await aiohttp_client(create_app(removed, workers=False))
    store = second.app[store_key]
    assert await emit(store, [booking_event("scope:removed")]) == 0
    kept = await store.get_subscription(str(TENANT_A["name"]), webhook["id"])
    assert kept is not None and kept.products == []
    await second.close()

    back = await aiohttp_client(create_app(make_config(delivery=LOOPBACK), workers=False))
    assert await emit(back.app[store_key], [booking_event("scope:back")]) == 1
