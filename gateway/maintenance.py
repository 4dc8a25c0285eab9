"""Maintenance: what the gateway keeps is deleted once kept long enough (a background task).

Each round turns the config's windows into cutoffs (``retention_for``) and asks the store to apply
them; the store deletes a little at a time, so a round never holds up pushes or deliveries.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.config import GatewayConfig
from gateway.store.errors import StorageUnavailable
from gateway.store.interface import Retention, Store

log = logging.getLogger(__name__)

DAY = 86400.0


def retention_for(config: GatewayConfig, now: float) -> Retention:
    return Retention(messages_before=now - config.delivery.retention_days * DAY)


async def maintain(store: Store, config: GatewayConfig, now: float | None = None) -> dict[str, int]:
    """One round; returns what went, per table."""
    removed = await store.apply_retention(
        retention_for(config, time.time() if now is None else now)
    )
    if removed:
        log.info("retention: deleted %s", ", ".join(f"{n} {table}" for table, n in removed.items()))
    return removed


async def maintain_forever(store: Store, config: GatewayConfig, interval: float = 3600.0) -> None:
    while True:
        try:
            await maintain(store, config)
        except StorageUnavailable:
            pass  # the store logged it; the next round catches up
        except Exception:
            log.exception("maintenance failed; trying again next round")
        await asyncio.sleep(interval)
