"""A PostgreSQL server that goes away: pushes answer 503 with Retry-After (the sender tries again),
never a 500, and the gateway works again once the server is back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import config_from_dict
from tests.conftest import REPO
from tests.fake_pms import BEDS24_INGEST_TOKEN
from tests.postgres import PostgresServer

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_server(pg_server: PostgresServer) -> Iterator[PostgresServer]:
    """A server of this test's own (it is stopped mid-test); pg_server only decides skip/fail."""
    server = PostgresServer().start()
    yield server
    server.stop()


async def test_pushes_answer_503_while_the_database_is_down(
    aiohttp_client: Any, tmp_path: Path, own_server: PostgresServer
) -> None:
    raw = {
        "storage": {"url": own_server.create_database()},
        "plugins": {"dir": str(REPO / "plugins")},
        "templates": {"dir": str(REPO / "templates")},
        "sources": {"beds24": {"token": BEDS24_INGEST_TOKEN, "api_url": "sandbox"}},
    }
    config = config_from_dict(raw, tmp_path / "gateway.toml")
    client = await aiohttp_client(create_app(config, workers=False))
    body = [{"booking": {"id": 1, "modifiedTime": "2030-01-01T00:00:00Z"}}]
    headers = {"X-Gateway-Token": BEDS24_INGEST_TOKEN}

    answer = await client.post("/ingest/beds24", json=body, headers=headers)
    assert answer.status == 200, await answer.text()

    await asyncio.to_thread(own_server.pg_ctl, "stop", "-m", "immediate", "-w")
    down = await client.post("/ingest/beds24", json=[{"booking": {"id": 2}}], headers=headers)
    assert down.status == 503, await down.text()
    assert "Retry-After" in down.headers
    assert (await down.json())["error"] != "INTERNAL_ERROR"
    ready = await client.get("/readyz")
    assert ready.status == 503

    await asyncio.to_thread(own_server.pg_ctl, "start", "-w")
    again = await client.post("/ingest/beds24", json=[{"booking": {"id": 3}}], headers=headers)
    assert again.status == 200, await again.text()
