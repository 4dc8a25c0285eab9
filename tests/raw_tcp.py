"""A loopback TCP server for tests whose peers must misbehave in ways aiohttp's server never
would. It owns every connection from the moment it is made, so ``stop`` closes all of them: a
connection accepted as the test ends (a gateway retrying every 0.2 s) would otherwise have its
handler task still unstarted when the loop closes, and its transport would outlive the loop (a
``ResourceWarning``, which the suite turns into an error in whatever test runs next)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class TcpServer:
    """Runs ``handler`` per connection on ``host:port`` (port 0: any free one); counts them."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.host, self.port = host, port
        self.connections = 0
        self.closed = 0
        self.server: asyncio.Server | None = None
        self._open: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connected, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain function: asyncio calls it inside connection_made, before the loop can stop.
        self.connections += 1
        self._open[writer] = asyncio.get_running_loop().create_task(self._serve(reader, writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the peer hung up
        finally:
            writer.close()
            self.closed += 1
            self._open.pop(writer, None)

    async def stop(self) -> None:
        """Stop listening, end every handler and close every connection."""
        if self.server is None:
            return
        self.server.close()
        # Sockets accepted just before the close become connections within a few iterations.
        for _ in range(5):
            await asyncio.sleep(0)
        tasks = list(self._open.values())
        for writer, task in list(self._open.items()):
            task.cancel()
            writer.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._open.clear()
