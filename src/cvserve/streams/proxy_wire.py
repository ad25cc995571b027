"""HTTP/1.1 on the stream guard's wire (`cvserve.streams.proxy`): request and response
heads, the proxy credentials, targets checked by the `?image=` rules, refusals, and the
byte relay between FFmpeg and the checked origin. Every read and write is bounded."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import httpx

from cvserve.errors import CVServeError
from cvserve.fetch import parse_url

HEAD_LIMIT = 16 * 1024  # a request or response head larger than this is refused
HEAD_TIMEOUT_S = 10.0  # a client that sends no full request head in this long is dropped
REALM = "cvserve-streams"
WHAT = "stream request"
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
}


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


async def read_head(reader: asyncio.StreamReader, response: bool = False) -> Any:
    """(method, target, headers) of a request, or (status line, headers) of a response."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
    except asyncio.LimitOverrunError:
        if response:
            raise
        raise Refused(431, "Request Header Fields Too Large", "request head too large") from None
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            if response:
                raise ValueError("bad header")
            raise Refused(400, "Bad Request", "malformed request head")
        headers.append((name, value.strip()))
    if response:
        if not lines[0].startswith("HTTP/1."):
            raise ValueError("not HTTP")
        return lines[0], headers
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, "Bad Request", "malformed request line")
    return parts[0], parts[1], headers


def token(headers: list[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() != "proxy-authorization":
            continue
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user_pass = base64.b64decode(encoded.strip(), validate=True).decode("latin-1")
        except (binascii.Error, ValueError):
            return None
        return user_pass.partition(":")[2] or None
    return None


def connect_target(target: str) -> httpx.URL:
    host, colon, port = target.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise Refused(400, "Bad Request", "CONNECT needs host:port")
    try:
        return parse_url(f"https://{host}:{port}/", WHAT)
    except CVServeError as exc:
        raise Refused(403, "Forbidden", exc.message) from None


def absolute_target(target: str) -> httpx.URL:
    if not target.lower().startswith("http://"):
        raise Refused(400, "Bad Request", "a proxy request names an absolute http:// URL")
    try:
        return parse_url(target, WHAT)
    except CVServeError as exc:
        raise Refused(403, "Forbidden", exc.message) from None


async def connect(
    addrs: list[str], port: int, timeout: float, host: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first checked address that answers (never a name: no lookup)."""
    for addr in addrs:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(addr, port, limit=HEAD_LIMIT), timeout
            )
        except (OSError, asyncio.TimeoutError):
            continue
    raise Refused(502, "Bad Gateway", f"cannot connect to {host}:{port}")


def head(first: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def answer(writer: asyncio.StreamWriter, refused: Refused) -> None:
    body = (refused.message + "\n").encode("utf-8", "replace")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    if refused.status == 407:
        headers.append(("Proxy-Authenticate", f'Basic realm="{REALM}"'))
    try:
        writer.write(head(f"HTTP/1.1 {refused.status} {refused.reason}", headers) + body)
        await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        pass


async def relay(
    pairs: list[tuple[asyncio.StreamReader, asyncio.StreamWriter | None]], idle_s: float
) -> None:
    """Copy each reader to its writer (None: read and drop) until one side ends or both
    fall silent for idle_s."""
    loop = asyncio.get_running_loop()
    last = [loop.time()]

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter | None) -> None:
        while True:
            data = await src.read(65536)
            if not data:
                return
            last[0] = loop.time()
            if dst is not None:
                dst.write(data)
                await dst.drain()
                last[0] = loop.time()

    tasks = [asyncio.ensure_future(pipe(src, dst)) for src, dst in pairs]
    try:
        while True:
            left = last[0] + idle_s - loop.time()
            if left <= 0:
                return
            done, _ = await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if done:
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        return  # a reset or a broken pipe: the exchange is over
                return
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
