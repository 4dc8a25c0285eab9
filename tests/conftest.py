"""Shared fixtures: a config on a real SQLite file in tmp_path and the app served on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import GatewayConfig, config_from_dict

REPO = Path(__file__).resolve().parent.parent

TENANT_A = {"name": "reseller-a", "key": "key-a-0123456789", "products": ["*"]}
TENANT_B = {"name": "reseller-b", "key": "key-b-0123456789", "products": ["room-1", "room-2"]}
ADMIN = {"name": "ops", "key": "key-admin-0123456", "products": ["*"], "admin": True}

AUTH_A = {"Authorization": f"Bearer {TENANT_A['key']}"}
AUTH_B = {"Authorization": f"Bearer {TENANT_B['key']}"}
AUTH_ADMIN = {"Authorization": f"Bearer {ADMIN['key']}"}


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
