"""Shared fixtures: a config on a real SQLite file in tmp_path (or, for tests marked
``both_stores``, also on a fresh database of a throwaway PostgreSQL server) and the app served on
loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import GatewayConfig, config_from_dict
from tests.fake_pms import Gateways, Harness, close_queries
from tests.postgres import PostgresServer, missing_reason
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


# -- stores: SQLite always; PostgreSQL too for tests marked both_stores ------------------------

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_stores: run the test on SQLite and on PostgreSQL (store_kind)"
    )
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL server (started by the tests)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_stores"
    ):
        metafunc.parametrize("store_kind", STORES, indirect=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session. Where none can be started the tests that
    need it skip, except with PG_REQUIRED=1 (CI), where they fail."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("PG_REQUIRED") == "1":
            pytest.fail(f"PG_REQUIRED=1 but PostgreSQL cannot run here: {reason}")
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    close_queries()
    server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server. The previous tests' databases are dropped
    first (their gateways have stopped by now), so the server's folder stays small."""
    # A count made during the last test's teardown (a fake PMS answering late) opened another
    # connection: close it before its database goes.
    close_queries()
    pg_server.drop_databases()
    yield pg_server.create_database()
    close_queries()


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = getattr(request, "param", "sqlite")
    return kind


@pytest.fixture
def storage(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """The [storage] table of every config the test makes."""
    if store_kind == "postgres":
        return {"url": request.getfixturevalue("pg_url")}
    return {"path": str(tmp_path / "gateway.db")}


@pytest.fixture
def make_config(tmp_path: Path, storage: dict[str, str]) -> Callable[..., GatewayConfig]:
    def make(**overrides: Any) -> GatewayConfig:
        raw: dict[str, Any] = {
            "storage": dict(storage),
            "plugins": {"dir": str(REPO / "plugins")},
            "templates": {"dir": str(REPO / "templates")},
            "delivery": {"allow_private_targets": False},
            "api_keys": [TENANT_A, TENANT_B, ADMIN],
            # The vendor samples' stays and ARI days are in 2020-2021: a gateway's first
            # maintenance round (it starts with the gateway and may run late on a loaded machine)
            # would delete their booking and availability state in the middle of a test.
            "retention": {"state_days_after_stay": 36500},
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
