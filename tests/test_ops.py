"""/healthz and /metrics."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

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
