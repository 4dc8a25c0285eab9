"""/healthz and /metrics."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.conftest import AUTH_A


async def test_healthz(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


async def test_metrics_count_requests_and_latency(client: TestClient[Any, Any]) -> None:
    await client.get("/octo/webhooks", headers=AUTH_A)
    await client.get("/octo/webhooks")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert (
        'gateway_http_requests_total{method="GET",route="/octo/webhooks",status="200"} 1.0' in text
    )
    assert (
        'gateway_http_requests_total{method="GET",route="/octo/webhooks",status="401"} 1.0' in text
    )
    assert (
        'gateway_http_request_duration_seconds_count{method="GET",route="/octo/webhooks"} 2.0'
        in text
    )


async def test_metrics_count_pushes_by_source_and_result(
    aiohttp_client: Any, make_config: Any
) -> None:
    config = make_config(sources={"beds24": {"token": "beds24-token"}})
    client = await aiohttp_client(create_app(config, workers=False))
    token = {"X-Gateway-Token": "beds24-token"}
    booking = {"booking": {"id": 5, "status": "confirmed", "modifiedTime": "2026-01-01T00:00:00Z"}}
    assert (await client.post("/ingest/beds24", json=booking, headers=token)).status == 200
    assert (await client.post("/ingest/beds24", json=booking, headers=token)).status == 200
    assert (await client.post("/ingest/beds24", data=b"{", headers=token)).status == 400
    assert (await client.post("/ingest/beds24", json=booking)).status == 401
    text = await (await client.get("/metrics")).text()
    for result in ("stored", "duplicate", "rejected", "unauthorized"):
        assert f'gateway_pushes_total{{result="{result}",source="beds24"}} 1.0' in text, result
