"""Slow and vanishing clients against a real server on loopback (issue 12, finding 8): headers and
bodies must arrive within server.header_timeout / body_timeout, at most server.max_connections are
open at once, and a client that leaves mid-body is neither an error in the log nor a 500."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.web.server import GuardedSite, make_runner
from tests.tenants import AUTH_A

TOKEN = "slow-client-token"
RESET = b"(reset)"


@pytest.fixture
async def serve(make_config: Callable[..., GatewayConfig]) -> AsyncIterator[Callable[..., Any]]:
    """Start the gateway as ``gateway serve`` does (make_runner + GuardedSite); returns its port."""
    runners: list[web.AppRunner] = []

    async def start(**server: Any) -> int:
        config = make_config(server=server, sources={"channex": {"token": TOKEN}})
        runner = make_runner(create_app(config), config.server)
        await runner.setup()
        runners.append(runner)
        await GuardedSite(runner, "127.0.0.1", 0, config.server.max_connections).start()
        port: int = runner.addresses[0][1]
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


async def held_open(port: int, first: bytes, drip: bytes) -> bytes:
    """Send ``first``, then one byte of ``drip`` every 0.2 s until the server closes the
    connection; what the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)

    async def trickle() -> None:
        for byte in drip:
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))

    dripping = asyncio.create_task(trickle())
    try:
        return await reader.read()  # until the server closes
    except ConnectionResetError:  # closed with our bytes unread: the answer may be lost
        return RESET
    finally:
        dripping.cancel()
        writer.close()


async def test_trickling_bodies_and_unfinished_headers_are_closed(
    serve: Callable[..., Any],
) -> None:
    port = await serve(header_timeout=0.5, body_timeout=1.0)
    body_head = (
        f"POST /ingest/channex HTTP/1.1\r\nHost: x\r\nX-Gateway-Token: {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    ).encode()
    octo_head = (
        f"POST /octo/webhooks HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH_A['Authorization']}\r\n"
        "Content-Length: 100000\r\n\r\n{"
    ).encode()
    header_head = b"POST /ingest/channex HTTP/1.1\r\nHost: x\r\n"
    clients = (
        [held_open(port, body_head, b" " * 10_000) for _ in range(150)]
        + [held_open(port, octo_head, b" " * 10_000) for _ in range(50)]
        + [held_open(port, header_head, b"X-Slow: " + b"a" * 10_000) for _ in range(100)]
    )
    # Without the timeouts every one of them stays open (the test's own limit ends it).
    answers = await asyncio.wait_for(asyncio.gather(*clients), 30)
    trickled, unfinished = answers[:200], answers[200:]
    timed_out = [a for a in trickled if a.startswith(b"HTTP/1.1 408 ") and b"REQUEST_TIMEOUT" in a]
    assert timed_out and len(timed_out) + trickled.count(RESET) == len(trickled)
    assert all(a in (b"", RESET) for a in unfinished)  # closed unanswered: no request was made
    # The server still serves.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_connections_over_the_cap_are_answered_503(serve: Callable[..., Any]) -> None:
    port = await serve(max_connections=5, header_timeout=30)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    refused = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert refused.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in refused
    _, first = idle.pop()
    first.close()
    await first.wait_closed()

    async def healthz() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            return await reader.read()
        finally:
            writer.close()

    for _ in range(100):  # the server sees the close a moment later
        answer = await asyncio.wait_for(healthz(), 10)
        if answer.startswith(b"HTTP/1.1 200 "):
            break
        await asyncio.sleep(0.05)
    assert answer.startswith(b"HTTP/1.1 200 ")
    for _, other in idle:
        other.close()


async def test_a_client_leaving_mid_body_is_no_error_and_no_500(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = await serve()
    heads = [
        f"POST /ingest/channex HTTP/1.1\r\nHost: x\r\nX-Gateway-Token: {TOKEN}\r\n"
        'Content-Length: 1000\r\n\r\n{"event":',
        f"POST /octo/webhooks HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH_A['Authorization']}\r\n"
        'Content-Length: 1000\r\n\r\n{"url":',
    ]
    for head in heads:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode())
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is reading the body
        writer.close()

    async def metrics() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            return (await reader.read()).decode()
        finally:
            writer.close()

    gone = ['route="/ingest/{source}",status="499"', 'route="/octo/webhooks",status="499"']
    for _ in range(200):
        text = await metrics()
        if all(label in text for label in gone):
            break
        await asyncio.sleep(0.05)
    assert all(label in text for label in gone), text
    assert 'status="500"' not in text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
