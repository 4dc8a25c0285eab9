"""Subscriptions follow their api key's products.

A subscription stores the products of the key that made it, and fan-out reads them from the
store. Without this, narrowing a key's ``products`` in gateway.toml (a reseller that lost a hotel)
left its older subscriptions receiving every product they had before, while the reads API
(``/octo/bookings``) already held the key to its new scope. At each start the gateway writes the
configured products onto every live subscription of each key.

A tenant no api key names any more (a reseller removed from gateway.toml) has no products: its
subscriptions are kept but receive nothing, and a WARNING names the tenant at each start. Put its
key back and they receive its products again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.config import ApiKey
from gateway.store import utcnow
from gateway.store.interface import Store

log = logging.getLogger(__name__)

ATTEMPTS = 3  # another process may change a subscription meanwhile: read it again and retry


def products_by_tenant(keys: Sequence[ApiKey]) -> dict[str, list[str]]:
    """Each tenant's products; two keys with one tenant name share the union of theirs."""
    scopes: dict[str, list[str]] = {}
    for key in keys:
        products = scopes.setdefault(key.name, [])
        products.extend(p for p in key.products if p not in products)
    return {name: ["*"] if "*" in products else products for name, products in scopes.items()}


async def rescope_subscriptions(store: Store, keys: Sequence[ApiKey]) -> int:
    """Give every live subscription its key's products (none when no key names its tenant);
    returns how many changed."""
    scopes = products_by_tenant(keys)
    for tenant in await store.subscription_tenants():
        if tenant not in scopes:
            log.warning(
                "tenant %s has subscriptions but no api key in the config: they receive nothing",
                tenant,
            )
            scopes[tenant] = []
    changed = 0
    for tenant, products in scopes.items():
        for listed in await store.list_subscriptions(tenant):
            subscription = listed
            for _ in range(ATTEMPTS):
                if subscription.products == products:
                    break
                updated = subscription.model_copy(
                    update={"products": products, "updated_at": utcnow()}
                )
                if await store.update_subscription(
                    updated, expected_updated_at=subscription.updated_at
                ):
                    changed += 1
                    log.info(
                        "subscription %s of %s now receives products %s (was %s)",
                        subscription.id,
                        tenant,
                        products,
                        subscription.products,
                    )
                    break
                found = await store.get_subscription(tenant, subscription.id)
                if found is None:  # deleted meanwhile
                    break
                subscription = found
    return changed
