"""SSRF guard: address classification, URL checks, and refusal at connect time against a
real server on loopback. No test leaves this machine: public names come from fake resolvers."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.delivery.http_client import PostClient
from gateway.delivery.netguard import (
    GuardedResolver,
    InvalidTargetURL,
    TargetError,
    UnresolvableHost,
    UnsafeTarget,
    check_host,
    check_url,
    is_forbidden_address,
)


class FakeResolver(AbstractResolver):
    """Answers from a table (a name maps to a list of answers, used one per lookup, the last
    one repeating); unknown names fail like getaddrinfo does."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self._answers = {name: iter(answers) for name, answers in table.items()}
        self._last: dict[str, list[str]] = {}
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self._answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addresses = self._last[host] = next(self._answers[host], self._last.get(host, []))
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


def fake(**names: str | list[str]) -> FakeResolver:
    """``fake(a_example="8.8.8.8")``: each name (``_`` for ``.``) always answers the same."""
    return FakeResolver(
        {
            name.replace("_", "."): [[answer] if isinstance(answer, str) else answer]
            for name, answer in names.items()
        }
    )


# --- address classification ----------------------------------------------------------------

FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "::1",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "fc00::1",
    "fd12:3456::1",
    "169.254.0.1",
    "169.254.169.254",  # cloud metadata
    "fe80::1",
    "fe80::1%eth0",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "ff0e::1",  # global-scope multicast: ipaddress calls it global
    "240.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "::",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "2001:db8::1",
    "fec0::1",  # site-local: ipaddress calls it global
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::a00:1",  # local-use NAT64 prefix
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.32.0.1",  # just above 172.16/12
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",  # IPv4-mapped public
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_allowed(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


# --- check_url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/",
        "http://LOCALHOST./hook",
        "http://api.localhost:8080/hook",
        "http://127.0.0.1/",
        "http://127.1.2.3:9000/hook",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://10.1.2.3/",
        "http://172.16.0.5/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1%25eth0]/",
        "http://[fd00::1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://100.64.0.1/",
        "https://user:secret@127.0.0.1/hook",
        # Legacy numeric IPv4 forms are names to yarl; getaddrinfo maps them onto 127.0.0.1.
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
    ],
)
async def test_check_url_refuses_private_targets(url: str) -> None:
    with pytest.raises(UnsafeTarget, match="not a public address"):
        await check_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.216.34/x",
        "file:///etc/passwd",
        "mailto:ops@example.com",
        "/relative/path",
        "example.com/hook",
        "//93.184.216.34/hook",
        "http:///hook",
        "http://",
        "not a url",
        "http://[::1/",
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_check_url_refuses_non_http_urls(url: str, allow_private: bool) -> None:
    with pytest.raises(InvalidTargetURL):
        await check_url(url, allow_private=allow_private)


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/hook",
        "http://8.8.8.8:8080/hook?x=1",
        "https://user:pass@93.184.216.34/hook",
        "https://[2001:4860:4860::8888]/hook",
        "HTTPS://[::ffff:8.8.8.8]/hook",
    ],
)
async def test_check_url_accepts_public_literals(url: str) -> None:
    await check_url(url, allow_private=False)


async def test_check_url_accepts_public_name_with_credentials() -> None:
    resolver = fake(hooks_example_com=["8.8.8.8", "2001:4860:4860::8888"])
    await check_url("https://user:pass@hooks.example.com/h", allow_private=False, resolver=resolver)
    assert resolver.lookups == ["hooks.example.com"]


async def test_check_url_resolves_the_idna_name() -> None:
    resolver = fake(**{"xn--bcher-kva_example": "8.8.8.8"})
    await check_url("https://bücher.example/hook", allow_private=False, resolver=resolver)
    assert resolver.lookups == ["xn--bcher-kva.example"]


async def test_check_url_refuses_a_name_with_any_private_answer() -> None:
    resolver = fake(mixed_example=["8.8.8.8", "10.0.0.7"])
    with pytest.raises(UnsafeTarget) as caught:
        await check_url("https://u:hunter2@mixed.example/", allow_private=False, resolver=resolver)
    message = str(caught.value)
    assert message == "mixed.example resolves to 10.0.0.7, which is not a public address"
    assert "hunter2" not in message
    assert (caught.value.host, caught.value.address) == ("mixed.example", "10.0.0.7")


async def test_check_url_refuses_unresolvable_name() -> None:
    with pytest.raises(UnresolvableHost, match=r"nowhere\.example does not resolve"):
        await check_url("https://nowhere.example/", allow_private=False, resolver=fake())


async def test_check_host_refuses_empty_answer() -> None:
    with pytest.raises(UnresolvableHost):
        await check_host("empty.example", 443, allow_private=False, resolver=fake(empty_example=[]))


async def test_localhost_refused_without_lookup() -> None:
    resolver = fake(localhost="8.8.8.8")
    with pytest.raises(UnsafeTarget, match="localhost is not a public address"):
        await check_host("localhost", 80, allow_private=False, resolver=resolver)
    assert resolver.lookups == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://localhost/", "http://[::1]/", "http://10.1.2.3/"]
)
async def test_check_url_allows_private_when_configured(url: str) -> None:
    resolver = fake()
    await check_url(url, allow_private=True, resolver=resolver)
    assert resolver.lookups == []  # the rule is off: nothing to resolve


def test_errors_are_value_errors_and_unsafe_target_is_a_connection_error() -> None:
    for error in (InvalidTargetURL, UnresolvableHost, UnsafeTarget):
        assert issubclass(error, TargetError)
        assert issubclass(error, ValueError)
    assert issubclass(UnsafeTarget, aiohttp.ClientConnectionError)


# --- connect-time enforcement ----------------------------------------------------------------


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="reached")


@pytest.fixture
async def server(aiohttp_server: Callable[..., Any]) -> TestServer:
    app = web.Application()
    app.router.add_post("/", hello)
    result: TestServer = await aiohttp_server(app, host="127.0.0.1")
    return result


@pytest.fixture
def port(server: TestServer) -> Iterator[int]:
    assert server.port is not None
    yield server.port


async def fetch(url: str, client: PostClient) -> str:
    """POST through the delivery's client (closed afterwards) and return the answer's text."""
    try:
        deadline = asyncio.get_running_loop().time() + 5
        answer = await client.post(URL(url), [], b"{}", limit=100, deadline=deadline)
        return answer.excerpt.decode()
    finally:
        await client.close()


def client(allow_private: bool, resolver: AbstractResolver | None = None) -> PostClient:
    return PostClient(allow_private=allow_private, connect_timeout=2, resolver=resolver)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "0x7f.0.0.1"])
async def test_delivery_client_refuses_loopback_server(port: int, host: str) -> None:
    with pytest.raises(UnsafeTarget):
        await fetch(f"http://{host}:{port}/", client(allow_private=False))


@pytest.mark.parametrize("host", ["127.1", "2130706433"])
async def test_legacy_numeric_ipv4_never_reaches_loopback(port: int, host: str) -> None:
    # getaddrinfo reads these as 127.0.0.1; the guard judges the address it answers.
    with pytest.raises(UnsafeTarget):
        await fetch(f"http://{host}:{port}/", client(allow_private=False))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_delivery_client_allows_private_when_configured(port: int, host: str) -> None:
    assert await fetch(f"http://{host}:{port}/", client(allow_private=True)) == "reached"


async def test_connect_time_check_refuses_name_resolving_privately(port: int) -> None:
    url = f"http://rebind.example:{port}/"
    refused = client(allow_private=False, resolver=fake(rebind_example="127.0.0.1"))
    with pytest.raises(UnsafeTarget, match=r"rebind\.example resolves to 127\.0\.0\.1"):
        await fetch(url, refused)
    # The same fake answer does reach the server when the rule is off.
    allowed = client(allow_private=True, resolver=fake(rebind_example="127.0.0.1"))
    assert await fetch(url, allowed) == "reached"


async def test_dns_rebinding_after_validation_is_refused(port: int) -> None:
    """The name is public when the subscription is checked, private when delivering."""
    resolver = FakeResolver({"rebind.example": [["8.8.8.8"], ["127.0.0.1"]]})
    url = f"http://rebind.example:{port}/"
    await check_url(url, allow_private=False, resolver=resolver)
    with pytest.raises(UnsafeTarget):
        await fetch(url, client(allow_private=False, resolver=resolver))
    assert resolver.lookups == ["rebind.example", "rebind.example"]


async def test_a_refused_answer_is_not_cached(port: int) -> None:
    """A name refused once is looked up again next time, not refused (or allowed) from memory."""
    resolver = FakeResolver({"flip.example": [["127.0.0.1"], ["127.0.0.1"]]})
    guarded = client(allow_private=False, resolver=resolver)
    try:
        for _ in range(2):
            with pytest.raises(UnsafeTarget):
                deadline = asyncio.get_running_loop().time() + 5
                await guarded.post(
                    URL(f"http://flip.example:{port}/"), [], b"{}", limit=10, deadline=deadline
                )
    finally:
        await guarded.close()
    assert resolver.lookups == ["flip.example", "flip.example"]


async def test_guarded_resolver_passes_public_answers() -> None:
    guard = GuardedResolver(fake(public_example="8.8.8.8"), allow_private=False)
    results = await guard.resolve("public.example", 443, family=socket.AF_UNSPEC)
    assert [result["host"] for result in results] == ["8.8.8.8"]


async def test_guarded_resolver_refuses_private_answers_unless_allowed() -> None:
    inner = fake(intranet_example="192.168.0.10", localhost="127.0.0.1")
    with pytest.raises(UnsafeTarget, match=r"192\.168\.0\.10"):
        await GuardedResolver(inner, allow_private=False).resolve("intranet.example")
    with pytest.raises(UnsafeTarget):
        await GuardedResolver(inner, allow_private=False).resolve("LocalHost.")
    allowing = GuardedResolver(inner, allow_private=True)
    assert [r["host"] for r in await allowing.resolve("intranet.example")] == ["192.168.0.10"]
    assert [r["host"] for r in await allowing.resolve("localhost")] == ["127.0.0.1"]
    assert inner.lookups == ["intranet.example", "intranet.example", "localhost"]
