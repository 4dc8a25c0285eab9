"""The delivery's HTTP client (gateway.delivery.http_client) against real loopback servers:
aiohttp's server for well-formed exchanges, raw asyncio servers for the answers a subscriber
could send that aiohttp's server never would."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.delivery import http_client
from gateway.delivery.http_client import (
    USER_AGENT,
    ConnectFailed,
    Disconnected,
    InvalidAnswer,
    PostClient,
    Target,
)
from gateway.delivery.netguard import InvalidTargetURL
from tests.raw_tcp import Handler, TcpServer
from tests.test_netguard import FakeResolver


class RawServer(TcpServer):
    @property
    def url(self) -> URL:
        return URL(f"http://{self.host}:{self.port}/hook")


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (by its Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """A handler answering each request on a connection with the next of ``answers`` (the last
    repeats), then keeping the connection open, or closing it with ``then_close``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = 0
        while True:
            await read_request(reader)
            writer.write(answers[min(index, len(answers) - 1)])
            await writer.drain()
            index += 1
            if then_close:
                return

    return handle


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def make(handler: Handler) -> RawServer:
        server = RawServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[PostClient]:
    made = PostClient(allow_private=True, connect_timeout=2)
    yield made
    await made.close()


def soon(seconds: float = 5) -> float:
    return asyncio.get_running_loop().time() + seconds


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_the_request_as_a_server_reads_it(
    aiohttp_server: Callable[..., Awaitable[TestServer]], client: PostClient
) -> None:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs, dict(request.headers), await request.read()))
        return web.Response(status=202, text="accepted", headers={"Retry-After": "7"})

    app = web.Application()
    app.router.add_post("/in/hook", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = URL(f"http://127.0.0.1:{server.port}/in/hook?a=1&b=%C3%A9")
    body = '{"café": 1}'.encode()
    headers = [("Content-Type", "application/json"), ("X-Tenant", "t1"), ("webhook-id", "msg_1")]
    answer = await client.post(url, headers, body, limit=100, deadline=soon())
    assert (answer.status, answer.excerpt, answer.cut) == (202, b"accepted", None)
    assert answer.headers["retry-after"] == "7"
    [(method, path_qs, sent, received)] = seen
    assert (method, path_qs, received) == ("POST", "/in/hook?a=1&b=%C3%A9", body)
    assert sent["Host"] == f"127.0.0.1:{server.port}"
    assert sent["Content-Length"] == str(len(body))
    assert sent["User-Agent"] == USER_AGENT
    assert (sent["X-Tenant"], sent["webhook-id"]) == ("t1", "msg_1")
    assert "Cookie" not in sent


def head(url: str, headers: list[tuple[str, str]] = [], body: bytes = b"") -> bytes:  # noqa: B006
    return Target.of(URL(url)).request(headers, body)


def test_the_host_header_leaves_out_a_default_port_and_brackets_ipv6() -> None:
    assert b"\r\nHost: example.com\r\n" in head("https://example.com:443/x")
    assert b"\r\nHost: example.com:8443\r\n" in head("https://example.com:8443/")
    assert b"\r\nHost: [2001:db8::1]:81\r\n" in head("http://[2001:db8::1]:81/")
    request = head("http://example.com/a%20b?q=a%26b", [("X-A", "1")], b"abc")
    assert request.startswith(b"POST /a%20b?q=a%26b HTTP/1.1\r\n")
    assert request.endswith(b"\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc")


@pytest.mark.parametrize("header", [("X-A", "1\r\nX-Injected: 2"), ("X-B\n", "1"), ("X-C", "\0")])
def test_a_header_that_would_split_the_request_is_refused(header: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="line break or NUL"):
        Target.of(URL("http://example.com/"), [header])
    with pytest.raises(ValueError, match="line break or NUL"):
        head("http://example.com/", [header])


def test_a_user_agent_or_accept_encoding_given_replaces_the_default() -> None:
    request = Target.of(URL("http://example.com/"), [("user-agent", "Partner/2")]).request([], b"")
    assert b"\r\nuser-agent: Partner/2\r\n" in request
    assert USER_AGENT.encode() not in request
    assert b"\r\nAccept-Encoding: identity\r\n" in request


def test_a_target_is_an_absolute_http_url() -> None:
    for url in ("ftp://example.com/", "/relative", "http:///no-host"):
        with pytest.raises(InvalidTargetURL):
            Target.of(URL(url))


async def test_connections_are_kept_alive_and_reused(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    server = await raw(answering(OK))
    for _ in range(5):
        answer = await client.post(server.url, [], b"{}", limit=10, deadline=soon())
        assert (answer.status, answer.excerpt) == (200, b"ok")
    assert server.connections == 1
    # Five at once need five connections, kept for the next five.
    sends = [client.post(server.url, [], b"{}", limit=10, deadline=soon()) for _ in range(5)]
    assert [a.status for a in await asyncio.gather(*sends)] == [200] * 5
    assert server.connections == 5
    sends = [client.post(server.url, [], b"{}", limit=10, deadline=soon()) for _ in range(5)]
    await asyncio.gather(*sends)
    assert server.connections == 5


async def test_connection_close_and_http_1_0_answers_are_not_reused(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    server = await raw(answering(closing, then_close=True))
    for _ in range(2):
        assert (await client.post(server.url, [], b"", limit=10, deadline=soon())).status == 200
    old = await raw(answering(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", then_close=True))
    for _ in range(2):
        assert (await client.post(old.url, [], b"", limit=10, deadline=soon())).status == 200
    assert (server.connections, old.connections) == (2, 2)


async def test_a_connection_the_server_closed_while_idle_is_not_used(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    # Keep-alive announced, then closed right after the answer (an idle timeout of zero).
    server = await raw(answering(OK, then_close=True))
    assert (await client.post(server.url, [], b"", limit=10, deadline=soon())).status == 200
    await asyncio.sleep(0.05)  # the close reaches the client
    assert (await client.post(server.url, [], b"", limit=10, deadline=soon())).status == 200
    assert server.connections == 2


async def test_chunked_and_close_ended_bodies(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    chunked = (
        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nfail\r\n6\r\ned: db\r\n0\r\n\r\n"
    )
    server = await raw(answering(chunked))
    answer = await client.post(server.url, [], b"", limit=100, deadline=soon())
    assert (answer.status, answer.excerpt, answer.cut) == (500, b"failed: db", None)
    unframed = await raw(answering(b"HTTP/1.1 200 OK\r\n\r\nall of it", then_close=True))
    answer = await client.post(unframed.url, [], b"", limit=100, deadline=soon())
    assert (answer.status, answer.excerpt, answer.cut) == (200, b"all of it", None)


async def test_a_body_cut_off_keeps_the_status_and_says_so(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    server = await raw(
        answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", then_close=True)
    )
    answer = await client.post(server.url, [], b"", limit=50, deadline=soon())
    assert (answer.status, answer.excerpt) == (200, b"only this")
    assert answer.cut == "answer body cut off: connection closed"


async def test_a_long_body_is_read_to_the_limit_and_the_connection_dropped(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
        await reader.read()  # until the client closes

    server = await raw(endless)
    answer = await client.post(server.url, [], b"", limit=2048, deadline=soon())
    assert (answer.status, answer.excerpt, answer.cut) == (200, b"x" * 2048, None)
    await client.post(server.url, [], b"", limit=2048, deadline=soon())
    assert server.connections == 2  # the first was not left half read in the pool
    # A long body that came whole was read through: its connection is kept.
    whole = await raw(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 9000\r\n\r\n" + b"y" * 9000))
    for _ in range(2):
        answer = await client.post(whole.url, [], b"", limit=2048, deadline=soon())
        assert answer.excerpt == b"y" * 2048
    assert whole.connections == 1


async def test_a_slow_body_ends_at_the_deadline_with_the_status_kept(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await asyncio.sleep(10)

    server = await raw(trickle)
    answer = await client.post(server.url, [], b"", limit=100, deadline=soon(0.3))
    assert (answer.status, answer.excerpt) == (200, b"ab")
    assert answer.cut == "answer body too slow; not read further"


async def test_interim_answers_are_skipped(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    server = await raw(
        answering(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK)
    )
    answer = await client.post(server.url, [], b"{}", limit=10, deadline=soon())
    assert (answer.status, answer.excerpt, answer.headers) == (200, b"ok", {"content-length": "2"})
    assert (await client.post(server.url, [], b"{}", limit=10, deadline=soon())).status == 200
    assert server.connections == 1


async def test_no_answer_is_an_error_that_says_what_happened(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    silent = await raw(hang_up)
    with pytest.raises(Disconnected, match="closed the connection"):
        await client.post(silent.url, [], b"{}", limit=10, deadline=soon())
    garbage = await raw(answering(b"SMTP ready\r\n\r\n"))
    with pytest.raises(InvalidAnswer, match="invalid HTTP answer"):
        await client.post(garbage.url, [], b"{}", limit=10, deadline=soon())
    endless = await raw(answering(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 100_000))
    with pytest.raises(InvalidAnswer, match="answer head longer than"):
        await client.post(endless.url, [], b"{}", limit=10, deadline=soon())
    closed = URL(f"http://127.0.0.1:{_free_port()}/")
    with pytest.raises(ConnectFailed, match=r"cannot connect to 127\.0\.0\.1:\d+: "):
        await client.post(closed, [], b"{}", limit=10, deadline=soon())


async def test_a_cancelled_post_closes_its_connection(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client closes

    server = await raw(never)
    task = asyncio.create_task(client.post(server.url, [], b"{}", limit=10, deadline=soon()))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if server.closed:
            break
        await asyncio.sleep(0.02)
    assert server.closed == 1


async def test_idle_connections_are_closed_after_keepalive(
    raw: Callable[[Handler], Awaitable[RawServer]],
) -> None:
    server = await raw(answering(OK))
    client = PostClient(allow_private=True, connect_timeout=2, keepalive=0.1)
    try:
        await client.post(server.url, [], b"", limit=10, deadline=soon())
        for _ in range(50):
            if server.closed:
                break
            await asyncio.sleep(0.02)
        assert server.closed == 1
    finally:
        await client.close()


async def test_idle_connections_beyond_the_limit_are_closed(
    raw: Callable[[Handler], Awaitable[RawServer]],
) -> None:
    servers = [await raw(answering(OK)) for _ in range(3)]
    client = PostClient(allow_private=True, connect_timeout=2, limit=2)
    try:
        for server in servers:
            await client.post(server.url, [], b"", limit=10, deadline=soon())
        await asyncio.sleep(0.05)
        assert [server.closed for server in servers] == [1, 0, 0]  # the longest idle went
        await client.post(servers[2].url, [], b"", limit=10, deadline=soon())
        assert servers[2].connections == 1
    finally:
        await client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (openssl, as Debian ships it)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_checks_the_certificate(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def hook(request: web.Request) -> web.Response:
        return web.Response(text=f"secure {request.secure}")

    app = web.Application()
    app.router.add_post("/", hook)
    server = await aiohttp_server(app, host="127.0.0.1", ssl=served)
    url = URL(f"https://localhost:{server.port}/")
    trusting = ssl.create_default_context(cafile=str(cert))
    client = PostClient(allow_private=True, connect_timeout=2, ssl_context=trusting)
    untrusting = PostClient(allow_private=True, connect_timeout=2)
    try:
        answer = await client.post(url, [], b"{}", limit=50, deadline=soon())
        assert (answer.status, answer.excerpt) == (200, b"secure True")
        with pytest.raises(ConnectFailed, match="certificate verify failed"):
            await untrusting.post(url, [], b"{}", limit=50, deadline=soon())
    finally:
        await client.close()
        await untrusting.close()


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_the_same_exchanges_under_uvloop() -> None:
    """`gateway serve` runs on uvloop, whose transports are not asyncio's classes: kept-alive,
    chunked, interim, cut-off and unanswered exchanges there too."""
    import uvloop

    async def scenario() -> None:
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
        servers = [RawServer(answering(OK)), RawServer(answering(chunked, interim))]
        servers.append(
            RawServer(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", then_close=True))
        )
        for server in servers:
            await server.start()
        client = PostClient(allow_private=True, connect_timeout=2)
        try:
            for server in servers[:2]:
                for _ in range(3):
                    answer = await client.post(server.url, [], b"{}", limit=10, deadline=soon())
                    assert (answer.status, answer.excerpt, answer.cut) == (200, b"ok", None)
                assert server.connections == 1
            answer = await client.post(servers[2].url, [], b"{}", limit=10, deadline=soon())
            assert answer.cut == "answer body cut off: connection closed"
            with pytest.raises(ConnectFailed):
                closed = URL(f"http://127.0.0.1:{_free_port()}/")
                await client.post(closed, [], b"{}", limit=10, deadline=soon())
        finally:
            await client.close()
            for server in servers:
                await server.stop()

    uvloop.run(scenario())


def per_connection(*handlers: Handler) -> Handler:
    """The n-th connection is served by the n-th handler (the last repeats)."""
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        await handlers[min(count, len(handlers)) - 1](reader, writer)

    return handle


def answer_once_then(after: Handler) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await after(reader, writer)

    return handle


async def test_a_kept_connection_closed_silently_is_sent_again_on_a_new_one(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    """The server's idle timeout racing ours: the request goes out on a kept connection the
    server closes without a byte of answer. It goes again, once, on a new connection."""
    received: list[bytes] = []

    async def close_on_next(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append((await read_request(reader))[1])  # read, then hang up unanswered

    server = await raw(per_connection(answer_once_then(close_on_next), answering(OK)))
    assert (await client.post(server.url, [], b"1", limit=10, deadline=soon())).status == 200
    answer = await client.post(server.url, [], b"2", limit=10, deadline=soon())
    assert (answer.status, answer.excerpt) == (200, b"ok")
    assert server.connections == 2
    assert received == [b"2"]


async def test_a_kept_connection_cut_mid_answer_is_not_sent_again(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 O")
        await writer.drain()

    server = await raw(per_connection(answer_once_then(half_answer), answering(OK)))
    assert (await client.post(server.url, [], b"1", limit=10, deadline=soon())).status == 200
    with pytest.raises(Disconnected) as caught:
        await client.post(server.url, [], b"2", limit=10, deadline=soon())
    assert not caught.value.silent
    assert server.connections == 1


async def test_checked_answers_are_cached_and_the_cache_is_bounded(
    raw: Callable[[Handler], Awaitable[RawServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_client, "DNS_ENTRIES", 2)
    server = await raw(answering(OK))
    names = ["a.example", "b.example", "c.example"]
    resolver = FakeResolver({name: [["127.0.0.1"]] for name in names})
    client = PostClient(allow_private=True, connect_timeout=2, resolver=resolver, limit=0)
    try:
        for name in [*names, "c.example", "a.example"]:
            url = server.url.with_host(name)
            assert (await client.post(url, [], b"", limit=10, deadline=soon())).status == 200
    finally:
        await client.close()
    # c.example answered from the cache; a.example looked up again: the full cache was emptied.
    assert resolver.lookups == ["a.example", "b.example", "c.example", "a.example"]


async def test_an_address_that_never_answers_costs_a_moment_not_the_connect_timeout() -> None:
    """Happy Eyeballs among the checked addresses: the name's first address never completes a
    handshake (a listener whose accept queue is full drops the SYN, as a broken route would), the
    second answers; the message goes at once, not after connect_timeout (30 s here)."""
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    port = stuck.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # fills the queue of one
    server = RawServer(answering(OK), "127.0.0.2", port)
    await server.start()
    resolver = FakeResolver({"two.example": [["127.0.0.1", "127.0.0.2"]]})
    client = PostClient(allow_private=True, connect_timeout=30, resolver=resolver)
    try:
        url = URL(f"http://two.example:{port}/")
        answer = await asyncio.wait_for(
            client.post(url, [], b"{}", limit=10, deadline=soon(60)), timeout=5
        )
        assert answer.status == 200
    finally:
        await client.close()
        await server.stop()
        filler.close()
        stuck.close()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_request_given_up_frees_its_socket_though_the_server_never_reads(
    raw: Callable[[Handler], Awaitable[RawServer]], client: PostClient
) -> None:
    """A request too big for the socket buffers to a server that reads nothing: when the caller
    gives up, the connection goes at once, its unsent bytes with it."""

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()

    server = await raw(never_read)
    before = _open_descriptors()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            client.post(server.url, [], b"x" * 32_000_000, limit=10, deadline=soon()), 0.5
        )
    await asyncio.sleep(0.05)
    assert server.connections == 1
    assert _open_descriptors() == before + 1  # the server's end; the client's is gone
