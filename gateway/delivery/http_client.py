"""The delivery's POST: HTTP/1.1 with keep-alive on asyncio's own transports, answers parsed by
httptools (llhttp, the C parser aiohttp and Node.js use).

A delivery sends one narrow kind of request: a POST of a body already in bytes, to a URL checked
against the SSRF rule, reading the status, the headers and the first couple of KB of the answer.
aiohttp's ``ClientSession`` does that for 140-200 µs of CPU per POST on the bench machine (a
request, a response, a payload, a writer task and a stream reader per POST; docs/performance-log.md
"Stop 17"), the largest single cost of a delivery; written as one ``write`` on a pooled
connection and parsed by llhttp it costs 18-20 µs. aiohttp still serves every request the gateway
answers and makes its calls to the PMS APIs.

What it does, and what it leaves out on purpose:

- connections are kept alive per (scheme, host, port) and reused last-in first-out; one idle
  longer than ``keepalive`` seconds, or closed by the server, is not reused; a new one tries the
  checked addresses with Happy Eyeballs (RFC 8305, aiohappyeyeballs, as aiohttp connects);
- ``check_host``'s rule on every connection: IP literals are checked before connecting, names by
  a ``GuardedResolver`` as they resolve (answers cached ``dns_ttl`` seconds, as checked), so a
  name re-pointed at a private address after the subscription was saved is still refused;
- HTTPS with the system's trust store and hostname checks (``ssl.create_default_context``);
- answers with a length, chunked, or ended by the server closing; 1xx interim answers are skipped;
- no redirects, proxies, cookies or compression (``Accept-Encoding: identity``): a webhook's answer
  is its status, and a subscriber's ``Set-Cookie`` is never sent back;
- one retry only, on a new connection, when a kept-alive one is closed by the server without a
  byte of answer (its idle timeout raced ours); any other connection lost before the answer is a
  failed attempt, which the delivery's retry policy sends again with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import codecs
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import aiohappyeyeballs
import aiohttp
import httptools
from aiohttp.abc import AbstractResolver
from yarl import URL

from gateway import package_version
from gateway.delivery.netguard import GuardedResolver, InvalidTargetURL, check_host

USER_AGENT = f"octo-gateway/{package_version()}"
KEEPALIVE = 15.0  # seconds an idle connection is kept for the next message (aiohttp's default)
DNS_TTL = 60.0  # seconds a checked answer is reused (what the aiohttp connector cached)
DNS_ENTRIES = 1024  # answers kept at most
HAPPY_EYEBALLS_DELAY = 0.25  # seconds before the next address is tried beside one not answering
MAX_HEAD = 65536  # bytes of status line and headers an answer may send before its body
_FORBIDDEN_IN_HEADERS = frozenset("\r\n\x00")


# Headers the gateway sets itself on every delivery (or that would change how the request is
# framed or read); neither a subscription nor a plugin may send its own.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",  # the body is sent as it is: a claimed encoding would make it unreadable
        "host",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
RESERVED_PREFIX = "webhook-"  # webhook-id, -timestamp, -signature and any the spec adds


def is_reserved_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIX)


class SendError(Exception):
    """The POST failed before a whole answer head came back; the message says how."""


class ConnectFailed(SendError):
    pass


class Disconnected(SendError):
    def __init__(self, message: str, *, silent: bool) -> None:
        super().__init__(message)
        self.silent = silent  # not one byte of an answer came


class InvalidAnswer(SendError):
    pass


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case; a name sent twice keeps its last value
    excerpt: bytes  # the answer's first ``limit`` bytes
    cut: str | None  # why the excerpt ends early (a slow or cut-off body), if it does


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.alive = True
        self.idle_since = 0.0
        self.limit = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.head_size = 0
        self.interim = False  # a 1xx answer is being parsed; the real one follows
        self.complete = False
        self.keep_alive = False
        self.cut: str | None = None
        self.head: asyncio.Future[None] | None = None
        self.done: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.head is None:  # nothing asked: a server talking out of turn can't be trusted
            self.close()
            return
        waiting = not self.head.done()
        if waiting:
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish(None)  # 101: what follows is not HTTP; the status is the answer
        except httptools.HttpParserError as exc:
            self._fail(InvalidAnswer(f"invalid HTTP answer: {exc}"))
        else:
            # llhttp keeps no limit of its own on a head's size.
            if waiting and not self.head.done() and self.head_size > MAX_HEAD:
                self._fail(InvalidAnswer(f"answer head longer than {MAX_HEAD} bytes"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.head is not None and not self.head.done():
            reason = f": {exc}" if exc else ""
            self.head.set_exception(
                Disconnected(
                    f"the server closed the connection{reason}", silent=self.head_size == 0
                )
            )
        elif not self.complete:
            # An answer with neither a length nor chunks ends when the server closes.
            framed = "content-length" in self.headers or "transfer-encoding" in self.headers
            self._finish("answer body cut off: connection closed" if framed else None)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True
            self.headers = {}
            return
        self.status = status
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        room = self.limit - len(self.body)
        if room > 0:
            self.body += body[:room]
            if len(self.body) >= self.limit and self.done is not None and not self.done.done():
                self.done.set_result(None)  # enough to show; the rest is not read

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._finish(None)

    # the request

    def begin(self, limit: int) -> None:
        loop = asyncio.get_running_loop()
        self.limit = limit
        self.status = 0
        self.headers = {}
        self.body = bytearray()
        self.head_size = 0
        self.complete = False
        self.keep_alive = False
        self.cut = None
        self.head = loop.create_future()
        self.done = None

    async def read_body(self, deadline: float) -> None:
        """Wait for the answer's body until it is whole, ``limit`` bytes are in, or ``deadline``
        (loop time); a body cut short says why in ``cut``."""
        if self.complete or len(self.body) >= self.limit:
            return
        self.done = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout_at(deadline):
                await self.done
        except TimeoutError:
            self.cut = "answer body too slow; not read further"

    def reusable(self) -> bool:
        return self.alive and self.complete and self.keep_alive and self.cut is None

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            # Abort, not close: close would keep the socket until a request the server never
            # reads is flushed, which may be never.
            self.transport.abort()

    def _finish(self, cut: str | None) -> None:
        self.complete = cut is None
        self.cut = cut
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _fail(self, error: SendError) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        elif not self.complete:
            self._finish(f"answer body cut off: {error}")
        self.close()


def _header_lines(headers: Iterable[tuple[str, str]]) -> str:
    """Header lines; a name or value with a line break or NUL is refused (``ValueError``): it
    would start a header, or a request, of its own."""
    lines = []
    for name, value in headers:
        if not _FORBIDDEN_IN_HEADERS.isdisjoint(name) or not _FORBIDDEN_IN_HEADERS.isdisjoint(
            value
        ):
            raise ValueError(f"header {name!r} holds a line break or NUL")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


DEFAULT_HEADERS = (("User-Agent", USER_AGENT), ("Accept-Encoding", "identity"))


def _authority(url: URL) -> str:
    host = url.raw_host or ""
    authority = f"[{host}]" if ":" in host else host
    return authority if url.is_default_port() else f"{authority}:{url.port}"


def _with_defaults(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` after the defaults they do not name: a subscription may name its own
    User-Agent or Accept-Encoding."""
    headers = list(headers)
    given = {name.lower() for name, _ in headers}
    return [(n, v) for n, v in DEFAULT_HEADERS if n.lower() not in given] + headers


def wire_headers(
    url: URL, headers: Iterable[tuple[str, str]], body: bytes
) -> list[tuple[str, str]]:
    """Every header of a POST of ``body`` with ``headers`` to ``url`` as it goes on the wire, in
    its order: what the console shows of an attempt."""
    return [
        ("Host", _authority(url)),
        *_with_defaults(headers),
        ("Content-Length", str(len(body))),
    ]


@dataclass(frozen=True, slots=True)
class Target:
    """A URL with the part of every request to it that does not change: the request line, the
    Host and the given headers, encoded once (``Target.of``)."""

    url: URL
    key: tuple[str, str, int]  # scheme, host, port: the connections it may share
    prefix: bytes

    @classmethod
    def of(cls, url: URL, headers: Iterable[tuple[str, str]] = ()) -> Target:
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise InvalidTargetURL("must be an absolute http:// or https:// URL")
        host = url.raw_host
        port = url.port or (443 if url.scheme == "https" else 80)
        prefix = f"POST {url.raw_path_qs} HTTP/1.1\r\n" + _header_lines(
            [("Host", _authority(url)), *_with_defaults(headers)]
        )
        return cls(url, (url.scheme, host, port), prefix.encode("utf-8"))

    def request(self, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
        """The whole request: the prefix, ``headers`` and the body with its length."""
        end = f"{_header_lines(headers)}Content-Length: {len(body)}\r\n\r\n"
        return b"".join((self.prefix, end.encode("utf-8"), body))


class PostClient:
    """Keep-alive POSTs for the delivery worker (see the module's docstring)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        connect_timeout: float,
        limit: int = 100,
        keepalive: float = KEEPALIVE,
        dns_ttl: float = DNS_TTL,
        resolver: AbstractResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.connect_timeout = connect_timeout
        self.limit = limit  # idle connections kept at most (in use ones are bounded by slots)
        self.keepalive = keepalive
        self.dns_ttl = dns_ttl
        inner = aiohttp.ThreadedResolver() if resolver is None else resolver
        self._resolver: AbstractResolver = (
            inner if allow_private else GuardedResolver(inner, allow_private=False)
        )
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._idle_count = 0
        self._addresses: dict[tuple[str, int], tuple[float, list[tuple[int, str]]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(
        self,
        target: Target | URL,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        limit: int,
        deadline: float,
        on_head: Callable[[], None] | None = None,
    ) -> Answer:
        """POST ``body`` with ``headers`` to ``target`` (a ``Target`` prepared once for many
        requests, or a URL); the answer's first ``limit`` bytes are read until ``deadline``
        (loop time); ``on_head`` is called when the answer's head is in. Raises ``SendError``
        (or ``UnsafeTarget``, a ``ValueError``) when no answer came; the caller bounds the whole
        call (a cancellation closes the connection)."""
        if isinstance(target, URL):
            target = Target.of(target)
        request = target.request(headers, body)
        kept = self._take(target.key)
        if kept is not None:
            try:
                return await self._exchange(kept, request, limit, deadline, on_head)
            except Disconnected as exc:
                if not exc.silent:
                    raise
                # A kept connection the server closed as this request went out (its idle
                # timeout raced ours) said nothing at all: send again on a new connection, as
                # browsers do. The message keeps its webhook-id, so a receiver that did get it
                # sees a duplicate it already knows how to drop.
        conn = await self._open(target.key)
        return await self._exchange(conn, request, limit, deadline, on_head)

    async def _exchange(
        self,
        conn: _Connection,
        request: bytes,
        limit: int,
        deadline: float,
        on_head: Callable[[], None] | None,
    ) -> Answer:
        kept = False
        try:
            conn.begin(limit)
            assert conn.transport is not None and conn.head is not None
            conn.transport.write(request)
            await conn.head
            if on_head is not None:
                on_head()
            await conn.read_body(deadline)
            answer = Answer(conn.status, conn.headers, bytes(conn.body), conn.cut)
            if conn.reusable() and not self._closed:
                self._put(conn)
                kept = True
            return answer
        finally:
            if not kept:
                conn.close()

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._idle_count = 0
        await self._resolver.close()

    # connections

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        now = asyncio.get_running_loop().time()
        while conns:
            conn = conns.pop()
            self._idle_count -= 1
            if conn.alive and now - conn.idle_since < self.keepalive:
                return conn
            conn.close()
        return None

    def _put(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        conn.head = None
        conn.idle_since = loop.time()
        if self._idle_count >= self.limit:
            self._close_oldest_idle()
            if self._idle_count >= self.limit:  # a limit of 0 keeps none
                conn.close()
                return
        self._idle.setdefault(conn.key, []).append(conn)
        self._idle_count += 1
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.keepalive, self._sweep)

    def _close_oldest_idle(self) -> None:
        oldest: list[_Connection] | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest[0].idle_since):
                oldest = conns
        if oldest is not None:
            oldest.pop(0).close()
            self._idle_count -= 1

    def _sweep(self) -> None:
        """Close the connections idle for longer than ``keepalive``: their file descriptors
        should not wait for a next message to the same host."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for key in list(self._idle):
            conns = self._idle[key]
            keep = [conn for conn in conns if conn.alive and now - conn.idle_since < self.keepalive]
            for conn in conns:
                if conn not in keep:
                    conn.close()
            self._idle_count -= len(conns) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle_count:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive, self._sweep)

    async def _open(self, key: tuple[str, str, int]) -> _Connection:
        """A new connection to one of the host's checked addresses: Happy Eyeballs (RFC 8305,
        as aiohttp connects), so an address that never answers (a broken IPv6 route, say) costs
        a quarter of a second, not the connect timeout; TCP and TLS within ``connect_timeout``."""
        scheme, host, port = key
        addresses = await self._resolve(host, port)
        infos = [
            (
                family,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (address, port) if family == socket.AF_INET else (address, port, 0, 0),
            )
            for family, address in addresses
        ]
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                sock = await aiohappyeyeballs.start_connection(
                    infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY
                )
                try:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(key),
                        sock=sock,
                        ssl=tls,
                        server_hostname=host if tls is not None else None,
                    )
                except BaseException:
                    sock.close()
                    raise
            return conn
        except TimeoutError:
            reason = f"no connection within {self.connect_timeout:g} s"
        except OSError as exc:
            reason = _describe(exc)
        raise ConnectFailed(f"cannot connect to {host}:{port}: {reason}")

    async def _resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        """The addresses to try for ``host``, each checked against the SSRF rule."""
        try:
            literal = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            literal = None
        if literal is not None:
            await check_host(host, port, allow_private=self.allow_private)
            return [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
        now = asyncio.get_running_loop().time()
        cached = self._addresses.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            results = await self._resolver.resolve(host, port, family=socket.AF_UNSPEC)
        except OSError as exc:
            raise ConnectFailed(f"cannot resolve {host}: {exc.strerror or exc}") from None
        addresses = [(int(result["family"]), str(result["host"])) for result in results]
        if not addresses:
            raise ConnectFailed(f"cannot resolve {host}: no address")
        if len(self._addresses) >= DNS_ENTRIES:  # URL templates can name hosts without end
            self._addresses = {k: v for k, v in self._addresses.items() if v[0] > now}
            if len(self._addresses) >= DNS_ENTRIES:
                self._addresses.clear()
        self._addresses[(host, port)] = (now + self.dns_ttl, addresses)
        return addresses

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def excerpt_text(answer: Answer, limit: int) -> str:
    """The excerpt as text: a character cut in half at the end is dropped, other undecodable
    bytes replaced, and a body cut short says so."""
    data = answer.excerpt
    if answer.cut is None and len(data) < limit:
        return data.decode("utf-8", "replace")
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=False)
    return text if answer.cut is None else f"{text} [{answer.cut}]"
