"""SSRF guard for subscriber URLs.

Rule (CONTRACT §4): a URL whose host is, or resolves to, a loopback, private, link-local,
multicast, reserved, unspecified or otherwise non-public address is refused unless
``delivery.allow_private_targets`` is true.

It is enforced twice:

- when a subscription is created or changed, by ``check_url`` (the API answers 400);
- on every connection a delivery makes, by ``gateway.delivery.http_client.PostClient``, so a
  name that later resolves to a private address (DNS rebinding) still can't be reached: it
  checks IP-literal hosts before connecting and resolves names through ``GuardedResolver``.

Deliveries never go through an HTTP proxy: the check would then only see the proxy's address.
"""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_SCHEMES = frozenset({"http", "https"})


class TargetError(ValueError):
    """A subscriber URL or host the gateway refuses to deliver to."""


class InvalidTargetURL(TargetError):
    """The URL is not an absolute http(s) URL with a host."""


class UnresolvableHost(TargetError):
    """The host name does not resolve to any address."""


class UnsafeTarget(TargetError, aiohttp.ClientConnectionError):
    """The host is, or resolves to, a non-public address.

    Also an ``aiohttp.ClientConnectionError``: raised at connect time, a delivery counts it
    as a failed connection like any other.
    """

    def __init__(self, host: str, address: str) -> None:
        self.host = host
        self.address = address
        if host == address:
            message = f"{host} is not a public address"
        else:
            message = f"{host} resolves to {address}, which is not a public address"
        super().__init__(message)


def is_forbidden_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is anything but a public unicast address.

    Forbidden: whatever ``ipaddress`` does not call global (loopback, RFC 1918 and
    fc00::/7 private, link-local incl. 169.254.169.254, CGNAT 100.64/10, unspecified,
    documentation, benchmarking, Teredo 2001::/32, ...), plus multicast, reserved and
    fec0::/10 site-local, which ``is_global`` lets through. An IPv4 address carried in IPv6
    is judged by the IPv4 address: IPv4-mapped ``::ffff:a.b.c.d`` and NAT64
    ``64:ff9b::a.b.c.d`` by it alone (so a public one stays reachable), 6to4
    ``2002:aabb:ccdd::/48`` by it as well as by the IPv6 rule.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_forbidden_address(embedded)
        if ip.sixtofour is not None and is_forbidden_address(ip.sixtofour):
            return True
        if ip.is_site_local:
            return True
    return not ip.is_global or ip.is_multicast or ip.is_reserved


def _check_address(host: str, address: str) -> None:
    """Raise ``UnsafeTarget`` unless ``address`` (a resolved or literal address) is public."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UnsafeTarget(host, address) from None  # not an address we can judge: refuse
    if is_forbidden_address(ip):
        raise UnsafeTarget(host, address)


def _is_localhost(host: str) -> bool:
    """``localhost`` and ``*.localhost`` always mean this machine (RFC 6761 §6.3)."""
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def check_host(
    host: str,
    port: int,
    *,
    allow_private: bool,
    resolver: AbstractResolver | None = None,
) -> None:
    """Refuse ``host`` if it is, or resolves to, a forbidden address.

    Raises ``UnsafeTarget`` if any address is forbidden (and for ``localhost`` names,
    without a lookup), ``UnresolvableHost`` if a name resolves to nothing. With
    ``allow_private`` nothing is checked and nothing is resolved: the rule is off.
    ``resolver`` defaults to ``aiohttp.ThreadedResolver`` (the system's getaddrinfo).
    """
    if allow_private:
        return
    if _is_ip_literal(host):
        _check_address(host, host)
        return
    if _is_localhost(host):
        raise UnsafeTarget(host, "localhost")
    own = resolver is None
    active = aiohttp.ThreadedResolver() if resolver is None else resolver
    try:
        results = await active.resolve(host, port, family=socket.AF_UNSPEC)
    except OSError as exc:
        raise UnresolvableHost(f"{host} does not resolve: {exc.strerror or exc}") from None
    finally:
        if own:
            await active.close()
    if not results:
        raise UnresolvableHost(f"{host} does not resolve")
    for result in results:
        _check_address(host, result["host"])


async def check_url(
    url: str, *, allow_private: bool, resolver: AbstractResolver | None = None
) -> None:
    """Validate a subscriber URL: absolute, http or https, with a host that passes
    ``check_host`` (``resolver`` as there). Credentials in the URL are allowed and never
    appear in the errors.

    Raises a ``TargetError`` (a ``ValueError``): ``InvalidTargetURL``, ``UnresolvableHost``
    or ``UnsafeTarget``.
    """
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise InvalidTargetURL(f"not a valid URL: {exc}") from None
    if not parsed.is_absolute() or parsed.scheme not in _SCHEMES:
        raise InvalidTargetURL("must be an absolute http:// or https:// URL")
    host = parsed.raw_host  # IDNA-encoded, as aiohttp resolves it
    if not host:
        raise InvalidTargetURL("must name a host")
    await check_host(host, parsed.port or 0, allow_private=allow_private, resolver=resolver)


class GuardedResolver(AbstractResolver):
    """A resolver that refuses names resolving to any forbidden address.

    Wraps ``inner`` (default ``aiohttp.ThreadedResolver``); raises ``UnsafeTarget`` from
    ``resolve`` so aiohttp never connects to, nor caches, such an answer. ``localhost``
    names are refused without a lookup. With ``allow_private`` it passes answers through.
    Closing it closes ``inner``.
    """

    def __init__(self, inner: AbstractResolver | None = None, *, allow_private: bool) -> None:
        self._inner = aiohttp.ThreadedResolver() if inner is None else inner
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not self._allow_private and _is_localhost(host):
            raise UnsafeTarget(host, "localhost")
        results = await self._inner.resolve(host, port, family=family)
        if not self._allow_private:
            for result in results:
                _check_address(host, result["host"])
        return results

    async def close(self) -> None:
        await self._inner.close()
