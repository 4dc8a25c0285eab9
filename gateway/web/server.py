"""Serving the app to clients that may be slow or hostile: bounded time to send a request, a
connection cap.

- Headers: aiohttp closes a connection still waiting for a request's headers when its keep-alive
  timer fires (armed when the connection opens and after each answer), so that timer is set to
  ``server.header_timeout``: a client has that long to finish a request's line and headers, and an
  idle keep-alive connection is closed after it too.
- Body: ``body_deadline`` gives a request's body ``server.body_timeout`` seconds from when its
  headers arrived; a body still incomplete then fails its reader with ``BodyTimeout`` (a 408 that
  closes the connection).
- Connections: ``GuardedSite`` counts open connections and answers one over
  ``server.max_connections`` with a 503 and closes it at once.
- Malformed requests: aiohttp answers them 400 itself and logs each at ERROR with a traceback, as
  if the gateway had failed; ``QuietMalformedRequests`` makes that one WARNING line naming the
  client and the problem.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.config import ServerConfig
from gateway.redact import without_quoted_bytes

OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 79\r\n\r\n"
    b'{"error": "SERVICE_UNAVAILABLE", "errorMessage": "too many connections; retry"}'
)
assert len(OVER_CAPACITY.split(b"\r\n\r\n", 1)[1]) == 79


class BodyTimeout(TimeoutError):
    """A request body did not arrive in time. A TimeoutError, so aiohttp's reading of what is left
    after the answer stops quietly instead of logging it."""


class QuietMalformedRequests(logging.Filter):
    """A request aiohttp could not parse is the client's error, answered 400: one WARNING line
    (``malformed request from 127.0.0.1: Invalid character in Content-Length``), no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            problem = (exc.message or type(exc).__name__).strip().splitlines()[0]
            problem = without_quoted_bytes(problem).rstrip(":")
            record.msg, record.args = (
                "malformed request from %s: %s (answered %d)",
                (
                    peer,
                    problem,
                    exc.code or 400,
                ),
            )
            record.exc_info, record.exc_text = None, None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_malformed_requests() -> None:
    """Install the filter on aiohttp's server logger, once."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietMalformedRequests) for f in server_log.filters):
        server_log.addFilter(QuietMalformedRequests())


def make_runner(app: web.Application, server: ServerConfig) -> web.AppRunner:
    quiet_malformed_requests()
    return web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=server.header_timeout,
        # What is left of a body the handler did not read is drained at most this long.
        lingering_time=min(10.0, server.body_timeout),
    )


def body_deadline(request: web.Request, timeout: float) -> asyncio.TimerHandle | None:
    """Arm the request's body deadline (cancel the handle once the request is answered); None
    when its body has all arrived already."""
    content = request.content
    if content.is_eof():
        return None

    def expire() -> None:
        if not content.is_eof():
            content.set_exception(BodyTimeout(f"request body not received in {timeout:g} s"))

    return asyncio.get_running_loop().call_later(timeout, expire)


class GuardedSite(web.BaseSite):
    """A TCP site that keeps at most ``max_connections`` connections open."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        max_connections: int,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        # A socket already listening (a worker of serve --workers shares its parent's).
        self._sock = sock
        self.max_connections = max_connections
        self.open_connections = 0

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def connection() -> asyncio.Protocol:
            if self.open_connections >= self.max_connections:
                return _Refused()
            self.open_connections += 1
            return _Counted(server(), self)

        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(
                connection, sock=self._sock, backlog=self._backlog
            )
            return
        self._server = await loop.create_server(
            connection, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class _Counted(asyncio.Protocol):
    """Passes everything to aiohttp's protocol; counts the connection closed when it is."""

    def __init__(self, inner: asyncio.Protocol, site: GuardedSite) -> None:
        self.inner = inner
        self.site = site

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.open_connections -= 1
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Refused(asyncio.Protocol):
    """A connection over the cap: answered 503 and closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(OVER_CAPACITY)
        transport.close()
