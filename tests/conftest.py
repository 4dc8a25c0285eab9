"""Shared fixtures: a config on a real SQLite file in tmp_path and the app served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import GatewayConfig, config_from_dict
from tests.fake_pms import Gateways, Harness
from tests.receivers import FAST_DELIVERY, QUIET_INGEST, Receiver
from tests.tenants import ADMIN, AUTH_A, AUTH_ADMIN, AUTH_B, REPO, TENANT_A, TENANT_B

__all__ = ["ADMIN", "AUTH_A", "AUTH_ADMIN", "AUTH_B", "REPO", "TENANT_A", "TENANT_B"]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., GatewayConfig]:
    def make(**overrides: Any) -> GatewayConfig:
        raw: dict[str, Any] = {
            "storage": {"path": str(tmp_path / "gateway.db")},
            "plugins": {"dir": str(REPO / "plugins")},
            "templates": {"dir": str(REPO / "templates")},
            "delivery": {"allow_private_targets": False},
            "api_keys": [TENANT_A, TENANT_B, ADMIN],
        }
        return config_from_dict(deep_merge(raw, overrides), tmp_path / "gateway.toml")

    return make


@pytest.fixture
def config(make_config: Callable[..., GatewayConfig]) -> GatewayConfig:
    return make_config()


@pytest.fixture
async def client(aiohttp_client: Any, config: GatewayConfig) -> TestClient[Any, Any]:
    result: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return result


# -- delivery tests: receivers on loopback and a gateway tuned to retry fast ----------------------


async def _started_receiver(aiohttp_server: Any) -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.start(aiohttp_server)
    yield found
    found.release()


receiver = pytest.fixture(_started_receiver, name="receiver")
other_receiver = pytest.fixture(_started_receiver, name="other_receiver")


@pytest.fixture
def fast_config(make_config: Callable[..., GatewayConfig]) -> Callable[..., GatewayConfig]:
    def make(**delivery: Any) -> GatewayConfig:
        return make_config(delivery={**FAST_DELIVERY, **delivery}, ingest=QUIET_INGEST)

    return make


# -- ingest tests: fake PMS APIs, a receiver and gateways to start and restart --------------------


@pytest.fixture
async def gateways(
    aiohttp_client: Any, aiohttp_server: Any, make_config: Any
) -> AsyncIterator[Gateways]:
    started = Gateways(aiohttp_client, aiohttp_server, make_config)
    yield started
    await started.close()


@pytest.fixture
async def gw(gateways: Gateways) -> Harness:
    return await gateways.start()
