"""Secrets never reach the log, aiohttp's own error log included (issue 12, finding 6): malformed
requests carrying an ingest token and an admin key are sent over raw sockets to real servers.
``gateway serve`` logs each as one WARNING line; an app served another way still gets aiohttp's
traceback, redacted."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.redact import redact
from gateway.web.server import QuietMalformedRequests
from tests.test_cli import demo_config, free_port, start_serve, wait_healthy

TOKEN = "demo-channex-token"  # the shipped config's ingest token
ADMIN_KEY = "demo-admin-key"
# Each makes aiohttp log "Error handling request" with the offending raw line.
MALFORMED = [
    f"GET /ingest/channex?token={TOKEN} HTTX/1.1\r\nHost: x\r\n\r\n".encode(),
    f"GET /ingest/channex?token={TOKEN} HTTP/1.1\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
    f"X-Gateway-Token: {TOKEN}\x00\r\n\r\n".encode(),
    f"POST /ingest/channex HTTP/1.1\r\nAuthorization: Bearer {ADMIN_KEY}\x01x\r\n\r\n".encode(),
    f"GET /octo/webhooks?token={TOKEN} HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n".encode(),
    # Header lines over aiohttp's limit: its error quotes the start of the value, without the name.
    f"GET /octo/webhooks HTTP/1.1\r\nAuthorization: Bearer {ADMIN_KEY}{'a' * 9000}\r\n\r\n".encode(),
    f"POST /ingest/channex HTTP/1.1\r\nX-Gateway-Token: {TOKEN}{' ' * 9000}x\r\n\r\n".encode(),
]


def send_raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_served_gateway_logs_no_secret_of_a_malformed_request(tmp_path: Path) -> None:
    port = free_port()
    proc = start_serve(demo_config(tmp_path, "\n"), port)
    try:
        wait_healthy(port, proc)
        for request in MALFORMED:
            assert send_raw(port, request).startswith(b"HTTP/1.")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Each is the client's error: one WARNING line naming the client and the problem, no traceback.
    lines = [line for line in err.splitlines() if "malformed request from 127.0.0.1" in line]
    assert len(lines) == len(MALFORMED), err
    assert all(" WARNING " in line and "(answered 400)" in line for line in lines), lines
    assert "Traceback" not in err and "Error handling request" not in err
    assert TOKEN not in err and ADMIN_KEY not in err


@pytest.fixture
def aiohttp_unquieted() -> Iterator[None]:
    """aiohttp's server logger as an app served another way finds it: without the filter a
    runner of ``gateway serve`` installs for the whole process (a test that ran one earlier, as
    test_slow_clients does, left it there and turned the tracebacks this test redacts into
    WARNING lines)."""
    server_log = logging.getLogger("aiohttp.server")
    quiet = [f for f in server_log.filters if isinstance(f, QuietMalformedRequests)]
    for f in quiet:
        server_log.removeFilter(f)
    yield
    for f in quiet:
        server_log.addFilter(f)


async def test_create_app_redacts_what_any_logger_writes(
    make_config: Any, caplog: pytest.LogCaptureFixture, aiohttp_unquieted: None
) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_app(make_config(sources={"channex": {"token": TOKEN}}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for request in MALFORMED:
            await asyncio.to_thread(send_raw, port, request)
        logging.getLogger("elsewhere").warning(
            "headers %s", {"Authorization": f"Bearer {ADMIN_KEY}", "Host": "x"}
        )
    finally:
        await runner.cleanup()
    assert "Error handling request" in caplog.text
    assert TOKEN not in caplog.text and ADMIN_KEY not in caplog.text
    assert "'Authorization': '***'" in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET /ingest/beds24?bookid=1&token=s3cret&status=new",
            "GET /ingest/beds24?bookid=1&token=***&status=new",
        ),
        ("b'X-Gateway-Token: s3cret\\x00'", "b'X-Gateway-Token: ***'"),
        ("authorization: Basic czNjcmV0\r\nHost: h", "authorization: ***\r\nHost: h"),
        (
            "<CIMultiDictProxy('Cookie': 's=1', 'Host': 'h')>",
            "<CIMultiDictProxy('Cookie': '***', 'Host': 'h')>",
        ),
        ("tenant a: this api key may not use /admin", "tenant a: this api key may not use /admin"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_only_a_client_error_is_quietened() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    from gateway.web.server import QuietMalformedRequests

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "Error handling request from %s",
            ("10.0.0.9",),
            (type(exc), exc, None),
        )

    bad = record(BadHttpMessage("Invalid header value char:\n\n  b'X: \\x01'"))
    assert QuietMalformedRequests().filter(bad)
    assert (bad.levelname, bad.exc_info) == ("WARNING", None)
    assert bad.getMessage() == (
        "malformed request from 10.0.0.9: Invalid header value char (answered 400)"
    )
    ours = record(RuntimeError("a bug of ours"))
    assert QuietMalformedRequests().filter(ours)
    assert ours.levelname == "ERROR" and ours.exc_info is not None
