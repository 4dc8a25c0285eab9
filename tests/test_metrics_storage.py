"""``/metrics`` shows the size of the SQLite write-ahead log, so an operator sees its bound hold
(docs/data.md); on PostgreSQL, whose server keeps its own, the gauge stays 0."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.appkeys import store_key
from gateway.config import GatewayConfig

pytestmark = pytest.mark.both_stores


def gauge(text: str, name: str) -> float:
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


async def test_metrics_show_the_write_ahead_log_size(
    aiohttp_client: Any, fast_config: Callable[..., GatewayConfig], store_kind: str
) -> None:
    config = fast_config()
    client = await aiohttp_client(create_app(config))
    await client.app[store_key].check_writable()  # a write: the log holds something

    if store_kind == "postgres":
        text = await (await client.get("/metrics")).text()
        assert gauge(text, "gateway_storage_log_bytes") == 0.0
        return
    wal = Path(f"{config.storage.path}-wal")
    before = wal.stat().st_size
    text = await (await client.get("/metrics")).text()
    after = wal.stat().st_size
    # The workers may write meanwhile; the log only grows this far below its limit.
    assert 0 < before <= gauge(text, "gateway_storage_log_bytes") <= after
