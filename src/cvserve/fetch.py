"""Fetch an image from a caller-supplied URL without becoming an SSRF proxy.

Every hop (the URL and each redirect) is parsed with httpx's own parser (the one that
will send the request, so there is no parser differential), its host is resolved once,
every resolved address is checked, and the connection is pinned to those checked
addresses: the HTTP stack never does its own DNS lookup that a rebinding attacker could
answer differently. Host header, TLS SNI and certificate checks still use the real name.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any

import httpcore
import httpx

from cvserve.errors import BadRequest, DeadlineExceeded, PayloadTooLarge
from cvserve.settings import Settings

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_REDIRECTS = {301, 302, 303, 307, 308}
_METADATA_IPS = {ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}
# Names that point at the machine itself or at cloud metadata services; refused before DNS.
_FORBIDDEN_NAMES = {
    "localhost",
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
}
_FORBIDDEN_SUFFIXES = (".localhost", ".internal")


def local_name(name: str) -> bool:
    """Whether a host name points at the machine itself or a cloud metadata service."""
    name = name.lower().rstrip(".")
    return name in _FORBIDDEN_NAMES or name.endswith(_FORBIDDEN_SUFFIXES)


_PRIVATE_V4 = tuple(ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_CGNAT = ip_network("100.64.0.0/10")
_ULA = ip_network("fc00::/7")
_V4_COMPAT = ip_network("::/96")
_NAT64 = (ip_network("64:ff9b::/96"), ip_network("64:ff9b:1::/48"))
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")
# WHATWG: a host whose last label is a number is an IPv4 address (maybe oddly spelled).
_NUMERIC_LAST_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


def address_problem(ip: IPAddress) -> str | None:
    """Why connecting to `ip` is refused ("a loopback address"), or None if it is public."""
    if ip in _METADATA_IPS:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if isinstance(ip, IPv6Address):
        # Forms that embed an IPv4 address and may reach it (dual-stack sockets, NAT64, 6to4).
        embedded: tuple[str, IPv4Address | None] = ("an IPv4-mapped", ip.ipv4_mapped)
        if embedded[1] is None and ip in _V4_COMPAT:
            embedded = ("an IPv4-compatible", IPv4Address(int(ip) & 0xFFFFFFFF))
        if embedded[1] is None and any(ip in n for n in _NAT64):
            embedded = ("a NAT64", IPv4Address(int(ip) & 0xFFFFFFFF))
        if embedded[1] is None and ip.sixtofour is not None:
            embedded = ("a 6to4", ip.sixtofour)
        if embedded[1] is None and ip.teredo is not None:
            embedded = ("a Teredo", ip.teredo[1])
        kind, v4 = embedded
        if v4 is not None:
            inner = address_problem(v4)
            return f"{kind} address embedding {v4}, {inner}" if inner else None
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, IPv4Address):
        if ip == IPv4Address("255.255.255.255"):
            return "a broadcast address"
        if ip in _CGNAT:
            return "a shared (CGNAT) address"
        if any(ip in n for n in _PRIVATE_V4):
            return "a private address"
    elif ip in _ULA:
        return "a unique-local (private) address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a non-public special-purpose address"
    return None


class AllowList:
    """settings.allow_url_hosts: hostnames (exact), IPs and CIDRs that skip the address check."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.nets: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".").strip("[]")
            try:
                self.nets.append(ip_network(entry, strict=False))
            except ValueError:
                self.names.add(entry)

    def has_name(self, host: str) -> bool:
        return host.rstrip(".") in self.names

    def has_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.nets)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses we checked; the hostname httpcore passes is a lookup key."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()
        self.pins: dict[str, list[str]] = {}

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addrs = self.pins.get(host)
        if not addrs:  # never reached via fetch_image; refuse rather than resolve
            raise httpcore.ConnectError(f"no checked address for {host}")
        error: Exception | None = None
        for addr in addrs:
            try:
                return await self._inner.connect_tcp(
                    addr, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _ip_or_none(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def parse_url(url: str, what: str) -> httpx.URL:
    """Strictly parse and sanity-check one hop's URL (no DNS yet); BadRequest says why not."""
    if _BAD_URL_CHARS.search(url):
        raise BadRequest(f"{what} refused: URL contains whitespace, control or backslash chars")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise BadRequest(f"{what} refused: invalid URL ({exc})") from exc
    if parsed.scheme not in ("http", "https"):
        raise BadRequest(f"{what} refused: scheme {parsed.scheme or '(none)'!r} is not http/https")
    if parsed.userinfo:
        raise BadRequest(f"{what} refused: credentials in the URL are not allowed")
    if not parsed.raw_host:
        raise BadRequest(f"{what} refused: URL has no host")
    return parsed


async def check_host(url: httpx.URL, allow: AllowList, timeout: float, what: str) -> list[str]:
    """Addresses the URL's host may be connected to; raises BadRequest if any is forbidden
    (DeadlineExceeded if its lookup outlasts `timeout`). Callers connect only to these."""
    host = url.raw_host.decode("ascii").lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    literal = _ip_or_none(host)
    name = host.rstrip(".")
    if literal is None:
        if ":" in host or not _HOSTNAME.fullmatch(host):
            raise BadRequest(f"{what} refused: invalid host {host!r}")
        if _NUMERIC_LAST_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
            # Decimal/octal/hex/short IPv4 spellings ("2130706433", "0x7f.1"): never canonical.
            try:
                means = f" (means {socket.inet_ntoa(socket.inet_aton(name))})"
            except OSError:
                means = ""
            raise BadRequest(f"{what} refused: non-canonical IP address {host!r}{means}")
    trusted = allow.has_name(host)
    if literal is None and not trusted and local_name(name):
        raise BadRequest(f"{what} refused: {name} is a local or cloud metadata hostname")

    if literal is not None:
        addrs = [literal]
    else:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"{what}: DNS lookup of {name} timed out") from None
        except (OSError, UnicodeError) as exc:
            raise BadRequest(f"{what}: cannot resolve host {name}") from exc
        addrs = []
        for info in infos:
            ip = ip_address(str(info[4][0]).split("%", 1)[0])  # drop any IPv6 scope id
            if ip not in addrs:
                addrs.append(ip)
        if not addrs:
            raise BadRequest(f"{what}: cannot resolve host {name}")

    if not trusted:
        for ip in addrs:  # ANY bad address refuses: the attacker may control which one is used
            problem = None if allow.has_ip(ip) else address_problem(ip)
            if problem:
                shown = name if literal is not None else f"{name} resolves to {ip}, which"
                raise BadRequest(f"{what} refused: {shown} is {problem}")
    return [str(ip) for ip in addrs]


async def _fetch(url: str, settings: Settings) -> bytes:
    allow = AllowList(settings.allow_url_hosts)
    backend = _PinnedBackend()
    transport = httpx.AsyncHTTPTransport(trust_env=False, retries=0)
    # httpx has no public hook for the network backend; swap in a pool that uses ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=backend,
        retries=0,
    )
    total, connect = settings.fetch_total_timeout_s, settings.fetch_connect_timeout_s
    timeout = httpx.Timeout(total, connect=connect)
    headers = {"User-Agent": "cvserve-fetch", "Accept": "image/*", "Accept-Encoding": "identity"}
    limit = settings.fetch_max_bytes
    what = "image URL"
    async with httpx.AsyncClient(
        transport=transport, trust_env=False, follow_redirects=False, timeout=timeout
    ) as client:
        for hop in range(settings.fetch_max_redirects + 1):
            parsed = parse_url(url, what)
            host_key = parsed.raw_host.decode("ascii")
            backend.pins[host_key] = await check_host(
                parsed, allow, settings.fetch_connect_timeout_s, what
            )
            try:
                async with client.stream("GET", parsed, headers=headers) as resp:
                    if resp.status_code in _REDIRECTS and "location" in resp.headers:
                        url = str(parsed.join(resp.headers["location"]))
                        what = f"image URL redirect #{hop + 1}"
                        continue
                    if not 200 <= resp.status_code < 300:
                        raise BadRequest(f"image URL returned HTTP {resp.status_code}")
                    encoding = resp.headers.get("content-encoding", "identity").lower()
                    if encoding != "identity":  # decompressing could blow past the byte cap
                        raise BadRequest(f"image URL sent Content-Encoding {encoding!r}")
                    length = resp.headers.get("content-length", "")
                    if length.isdigit() and int(length) > limit:
                        raise PayloadTooLarge(f"image URL body is {length} bytes (max {limit})")
                    body = bytearray()
                    async for chunk in resp.aiter_raw():
                        body += chunk
                        if len(body) > limit:
                            raise PayloadTooLarge(f"image URL body exceeds {limit} bytes")
                    return bytes(body)
            except httpx.TimeoutException as exc:
                phase = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "reading from"
                raise DeadlineExceeded(f"{what}: timed out {phase} {parsed.host}") from exc
            except httpx.HTTPError as exc:
                raise BadRequest(
                    f"{what} could not be fetched from {parsed.host} ({type(exc).__name__})"
                ) from exc
        raise BadRequest(f"image URL redirected more than {settings.fetch_max_redirects} times")


async def fetch_image(url: str, settings: Settings) -> bytes:
    """GET `url` (http/https) with SSRF guards, redirects, timeouts and a byte cap.

    Raises BadRequest (400) for refused/invalid URLs and upstream errors, PayloadTooLarge
    (413) past settings.fetch_max_bytes, DeadlineExceeded (504) on timeouts.
    """
    try:
        return await asyncio.wait_for(_fetch(url, settings), settings.fetch_total_timeout_s)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(
            f"image URL fetch exceeded the {settings.fetch_total_timeout_s:g}s deadline"
        ) from None
