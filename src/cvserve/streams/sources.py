"""Which video sources a caller may name, and how they are shown.

A stream source is a URL the server opens on the caller's behalf, so it passes the same
guard as `?image=` (`cvserve.fetch`): network hosts must resolve only to public addresses
unless the operator admits them (`allow_stream_nets`); files and capture devices only
inside an operator's `stream_dirs`, resolved (symlinks followed) before the check.
Credentials in a URL are kept for opening it and never shown: `shown` replaces them.

Checking the URL once is not enough, as FFmpeg resolves names itself and follows what a
server names. So plain rtsp:// and rtsps:// are pinned to the checked address (FFmpeg
never looks the name up), and every HTTP(S) request FFmpeg makes for an http(s):// source
(the URL, each redirect, each HLS playlist, segment and key) goes through the stream guard
(`cvserve.streams.proxy`), which checks and pins each one the same way. What remains is
written in `_network`.
"""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from cvserve.errors import BadRequest

# The guard's own rules (one SSRF policy for images and streams).
from cvserve.fetch import AllowList, address_problem, local_name
from cvserve.settings import Settings
from cvserve.streams.proxy import Policy

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".ts")
_DEVICE = re.compile(r"/dev/video[0-9]{1,3}")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
# What FFmpeg may open while reading a network source, per scheme: never a local file or a
# pipe, and no protocol the source's content could steer elsewhere (an HTTP body probed as
# SDP would open rtp/udp to any address it names; HLS and DASH open only http(s) and data).
# `tcp` under http(s) only ever connects to the stream guard (FFmpeg's http_proxy).
_PROTOCOLS = {
    "http": "http,https,tls,tcp,httpproxy,crypto,data",
    "rtsp": "rtsp,tcp",
    "rtsps": "rtsps,tls,tcp",
}

Kind = Literal["file", "network", "device"]


@dataclass(frozen=True)
class Source:
    url: str  # what FFmpeg opens (credentials included: never shown, never logged)
    shown: str  # the source as answers, logs and metrics show it
    kind: Kind
    options: dict[str, str] = field(default_factory=dict)  # FFmpeg demuxer/protocol options
    format: str | None = None  # FFmpeg input format, where it cannot be probed (v4l2)
    # http(s): the stream guard's policy; every request FFmpeg makes goes through it.
    guard: Policy | None = None

    @property
    def live(self) -> bool:
        return self.kind != "file"

    def scrub(self, text: str) -> str:
        """`text` (an FFmpeg error, say) with this source's secrets replaced by `shown`."""
        return scrub_url(text, self.url, self.shown)


def scrub_url(text: str, url: str, shown: str) -> str:
    text = text.replace(url, shown)
    userinfo = urlsplit(url).netloc.rpartition("@")[0] if "://" in url else ""
    if userinfo:
        text = text.replace(userinfo, "***")
        text = text.replace(unquote(userinfo), "***")
    return text


def redact(raw: str) -> str:
    """`rtsp://user:pw@cam/1?token=x` -> `rtsp://***@cam/1?***`: no secret survives."""
    if "://" not in raw:
        return raw
    try:
        parts = urlsplit(raw)
    except ValueError:
        return raw.split("://", 1)[0] + "://***"
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


async def check_source(raw: str, settings: Settings) -> Source:
    """The Source `raw` names, or BadRequest saying why it may not be opened."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("source is required (a file://, rtsp://, http(s):// URL or /dev/videoN)")
    raw = raw.strip()
    if _BAD_CHARS.search(raw):
        raise BadRequest("source refused: it contains whitespace, control or backslash chars")
    if raw.startswith("/"):
        return _local(raw, settings)
    scheme = raw.split(":", 1)[0].lower() if ":" in raw else ""
    if scheme == "file":
        try:
            parts = urlsplit(raw)
        except ValueError as exc:
            raise BadRequest(f"source refused: invalid URL ({exc})") from None
        if parts.netloc not in ("", "localhost"):
            raise BadRequest("source refused: a file:// URL names no host")
        return _local(unquote(parts.path), settings)
    if scheme not in NETWORK_SCHEMES:
        raise BadRequest(
            f"source refused: scheme {scheme or '(none)'!r} is not one of file, "
            f"{', '.join(NETWORK_SCHEMES)} (or a /dev/videoN device)"
        )
    return await _network(raw, scheme, settings)


def _local(path_text: str, settings: Settings) -> Source:
    path = Path(path_text)
    if not path.is_absolute() or ".." in path.parts:
        raise BadRequest("source refused: a file path must be absolute, without '..'")
    device = bool(_DEVICE.fullmatch(path_text))
    if not device and path.suffix.lower() not in VIDEO_SUFFIXES:
        raise BadRequest(
            f"source refused: {path.suffix or 'no extension'} is not a video file "
            f"({', '.join(VIDEO_SUFFIXES)})"
        )
    if not settings.stream_dirs:
        raise BadRequest("source refused: this server allows no file sources (--stream-dir)")
    # First as written (so a refusal never tells whether a file outside exists), then as
    # resolved (symlinks followed: the check sees the real target).
    if not any(_inside(path, d, lexical=True) for d in settings.stream_dirs):
        raise BadRequest(f"source refused: {path_text} is outside the allowed stream dirs")
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise BadRequest(f"source refused: {path_text} does not exist") from None
    if not any(_inside(real, d) for d in settings.stream_dirs):
        raise BadRequest(f"source refused: {path_text} is outside the allowed stream dirs")
    if device:
        return Source(str(real), path_text, "device", format="v4l2")
    if not real.is_file():
        raise BadRequest(f"source refused: {path_text} is not a regular file")
    return Source(str(real), f"file://{path_text}", "file")


def _inside(path: Path, allowed: Path, lexical: bool = False) -> bool:
    try:
        root = allowed.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    roots = (root, Path(allowed).absolute()) if lexical else (root,)
    return any(path == r or path.is_relative_to(r) for r in roots)


async def _network(raw: str, scheme: str, settings: Settings) -> Source:
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"source refused: invalid URL ({exc})") from None
    host = (parts.hostname or "").lower().rstrip(".")
    shown = redact(raw)
    if not host:
        raise BadRequest(f"source refused: {shown} has no host")
    allow = AllowList(settings.allow_stream_nets)
    addrs = await _addresses(host, port or 554, settings.stream_open_timeout_s)
    if not allow.has_name(host):
        if local_name(host):
            raise BadRequest(f"source refused: {host} is a local or cloud metadata hostname")
        for ip in addrs:  # any forbidden address refuses: the resolver's pick is not ours
            problem = None if allow.has_ip(ip) else address_problem(ip)
            if problem:
                raise BadRequest(
                    f"source refused: {host} is {problem} "
                    "(an operator admits it with --allow-stream-net)"
                )
    if scheme in ("http", "https"):
        # Redirects, playlists and rebinding: each request is checked again by the guard.
        guard = Policy(
            tuple(settings.allow_stream_nets),
            settings.stream_open_timeout_s,
            settings.stream_read_timeout_s,
        )
        return Source(
            raw, shown, "network", {"protocol_whitelist": _PROTOCOLS["http"]}, guard=guard
        )
    # RTSP(S): the URL is pinned to the checked address and the transport is TCP on that one
    # connection (no UDP ports, no other host). rtsps:// pinned to an address sends no SNI
    # and cannot be checked against the name; FFmpeg does not verify an RTSPS camera's
    # certificate at all (tls_verify is off and the rtsp demuxer passes no TLS options),
    # so pinning loses no check that was made. What remains: an RTSP server's 3xx answer
    # to OPTIONS or DESCRIBE makes FFmpeg connect to the Location it names, unchecked.
    options = {"protocol_whitelist": _PROTOCOLS[scheme], "rtsp_transport": "tcp"}
    return Source(_pinned(parts, addrs[0]), shown, "network", options)


def _pinned(parts: SplitResult, ip: object) -> str:
    """The URL with its host replaced by the checked address, so FFmpeg's own lookup cannot
    be answered differently (DNS rebinding). RTSP(S) only: HTTP(S) goes through the guard,
    which keeps the name for Host, SNI and certificates."""
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


async def _addresses(host: str, port: int, timeout: float) -> list:
    from ipaddress import ip_address

    try:
        return [ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
            timeout,
        )
    except (asyncio.TimeoutError, OSError, UnicodeError):
        raise BadRequest(f"source refused: cannot resolve host {host}") from None
    out: list = []
    for info in infos:
        ip = ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    if not out:
        raise BadRequest(f"source refused: cannot resolve host {host}")
    return out
