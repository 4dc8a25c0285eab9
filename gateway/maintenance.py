"""Maintenance: what the gateway keeps is deleted once kept long enough (a background task).

Each round turns the config's windows (``delivery.retention_days`` and ``[retention]``, see
docs/data.md) into cutoffs and asks the store to apply them; the store deletes a little at a time,
so a round never holds up pushes or deliveries. The space freed goes back to the file system.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from gateway.config import GatewayConfig
from gateway.store.errors import StorageUnavailable
from gateway.store.interface import Retention, Store

log = logging.getLogger(__name__)

DAY = 86400.0


def retention_for(config: GatewayConfig, now: float) -> Retention:
    keep = config.retention
    stays_ended = datetime.fromtimestamp(now - keep.state_days_after_stay * DAY, UTC)
    return Retention(
        messages_before=now - config.delivery.retention_days * DAY,
        pushes_before=now - keep.pushes_days * DAY,
        failed_pushes_before=now - keep.failed_pushes_days * DAY,
        stays_before=stays_ended.date().isoformat(),
        state_untouched_before=now - keep.state_days_after_stay * DAY,
    )


async def maintain(store: Store, config: GatewayConfig, now: float | None = None) -> dict[str, int]:
    """One round; returns what went, per table (and ``pages`` given back)."""
    retention = retention_for(config, time.time() if now is None else now)
    removed = await store.apply_retention(retention)
    pages = await store.release_free_pages()
    if pages:
        removed["pages"] = pages
    if removed:
        log.info("retention: deleted %s", ", ".join(f"{n} {what}" for what, n in removed.items()))
    return removed


async def maintain_forever(store: Store, config: GatewayConfig) -> None:
    while True:
        try:
            await maintain(store, config)
        except StorageUnavailable:
            pass  # the store logged it; the next round catches up
        except Exception:
            log.exception("maintenance failed; trying again next round")
        await asyncio.sleep(config.retention.interval)
