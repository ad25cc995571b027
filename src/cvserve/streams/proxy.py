"""The stream guard: every HTTP(S) request FFmpeg makes for a stream goes through here.

FFmpeg resolves names itself, follows HTTP redirects and fetches whatever an HLS playlist
names (segments, keys, variant playlists), so checking a source URL once is not enough:
a public URL could redirect to 127.0.0.1 or 169.254.169.254, a playlist could list a
private host, and a name could resolve differently the second time (DNS rebinding).
So an http(s):// source is opened with FFmpeg's `http_proxy` option set to this proxy,
which cvserve runs on 127.0.0.1 in a thread of its own. For each request it applies the
same rules as `?image=` (`cvserve.fetch.check_host`, admitting the operator's
`allow_stream_nets`): plain http arrives as `GET http://host/path`, https as
`CONNECT host:443` (FFmpeg's tls protocol tunnels through the proxy, so a redirect or a
segment on https is one more CONNECT, checked the same way). The proxy resolves the host
once, refuses (403, the reason in the body and in the lease's `refusals`) if any address
is forbidden, and connects to the checked address itself, so FFmpeg never picks the
address. What FFmpeg did with `http_proxy` (PyAV 18's FFmpeg 8) was measured in
tests/test_streams_guard.py.

Each reader holds a lease: a random token that FFmpeg sends as Basic proxy credentials
(after a 407, as FFmpeg only answers a challenge), naming that stream's policy. A request
without a live lease's token is answered 407, so nothing else on the machine can use the
proxy to reach the networks an operator admitted for streams. The proxy starts with the
first lease and stops with the last (a server's streams all end when it stops); a lease's
connections are cut when its reader stops. It is bounded: a request head within
HEAD_TIMEOUT_S and HEAD_LIMIT bytes, connects within the stream open timeout, no byte in
either direction for the read timeout ends a connection, at most MAX_CONNECTIONS at once
and MAX_PER_LEASE per stream. It logs hosts and reasons, never a path, query or header
(credentials travel in those).

FFmpeg skips a proxy for any host listed in the `no_proxy` environment variable (only
that lowercase spelling), which would let a redirect to such a host go around the guard:
the first lease moves `no_proxy` to `NO_PROXY`, which the other HTTP clients of the
process (Python's, curl's) read the same way and FFmpeg does not read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from cvserve.errors import CVServeError
from cvserve.fetch import AllowList, check_host, parse_url

log = logging.getLogger("cvserve.streams")

HEAD_LIMIT = 16 * 1024  # a request or response head larger than this is refused
HEAD_TIMEOUT_S = 10.0  # a client that sends no full request head in this long is dropped
MAX_CONNECTIONS = 128  # at once, all streams together
MAX_PER_LEASE = 8  # at once, one stream (an HLS stream uses two; redirects are sequential)
REALM = "cvserve-streams"
WHAT = "stream request"
_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
}


@dataclass(frozen=True)
class Policy:
    """What a stream's FFmpeg may connect to: the SSRF rules plus the operator's admits."""

    allow: tuple[str, ...]  # settings.allow_stream_nets
    connect_timeout_s: float
    idle_timeout_s: float


@dataclass(eq=False)
class Lease:
    """One reader's right to use the proxy: the `http_proxy` URL FFmpeg is given."""

    proxy: StreamProxy
    token: str
    policy: Policy
    url: str
    allow: AllowList = field(init=False)
    refusals: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.allow = AllowList(self.policy.allow)

    def cut(self) -> None:
        """Close this lease's open connections now (FFmpeg's reads end at once)."""
        self.proxy._cut(self)

    def release(self) -> None:
        self.proxy._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class StreamProxy:
    """The process's proxy: one asyncio loop in one thread, while any lease is held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port = 0
        self._active = 0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def lease(self, policy: Policy) -> Lease:
        _hide_no_proxy()
        with self._lock:
            if self._thread is None:
                self._start()
            token = secrets.token_urlsafe(24)
            lease = Lease(self, token, policy, f"http://cvserve:{token}@127.0.0.1:{self._port}")
            self._leases[token] = lease
            return lease

    # -- lifecycle -----------------------------------------------------------------------------
    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0, limit=HEAD_LIMIT)
                )
                self._port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to the thread that asked for a lease
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = threading.Thread(target=run, name="cvserve-stream-proxy", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            raise CVServeError(f"the stream guard could not start: {failure[0]}", status=503)
        self._loop, self._thread = loop, thread
        log.debug("stream guard listening on 127.0.0.1:%d", self._port)

    def _release(self, lease: Lease) -> None:
        with self._lock:
            if self._leases.pop(lease.token, None) is None:
                return
            loop, thread = self._loop, self._thread
            if self._leases or loop is None or thread is None:
                self._cut(lease)
                return
            self._loop = self._thread = None
            server, self._server = self._server, None
        # The last lease: everything closes, the thread ends.
        with contextlib.suppress(Exception):  # the loop is gone already: nothing to close
            asyncio.run_coroutine_threadsafe(self._shutdown(server), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    async def _shutdown(self, server: asyncio.Server | None) -> None:
        if server is not None:
            server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _cut(self, lease: Lease) -> None:
        loop = self._loop
        if loop is None:
            return

        def cancel() -> None:
            for task in list(lease.tasks):
                task.cancel()

        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(cancel)

    # -- one client connection ---------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        lease: Lease | None = None
        task = asyncio.current_task()
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                raise _Refused(503, "Service Unavailable", "too many stream connections")
            method, target, headers = await _read_head(reader)
            lease = self._leases.get(_token(headers) or "")
            if lease is None:
                raise _Refused(407, "Proxy Authentication Required", "no stream lease")
            if len(lease.tasks) >= MAX_PER_LEASE:
                raise _Refused(503, "Service Unavailable", "too many connections for a stream")
            assert task is not None
            lease.tasks.add(task)
            upstream = await self._serve(lease, method, target, headers, reader, writer)
        except _Refused as refused:
            if refused.status == 403 and lease is not None:
                lease.refusals.append(refused.message)
                log.warning("stream guard: %s", refused.message)
            await _answer(writer, refused)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass  # a client or upstream that went away or fell silent: just close
        except asyncio.CancelledError:
            pass  # cut (the stream stopped) or the proxy is shutting down
        except Exception as exc:  # a bug here must not take the proxy down; no URL in the log
            log.warning("stream guard: %s while serving a request", type(exc).__name__)
        finally:
            self._active -= 1
            if lease is not None and task is not None:
                lease.tasks.discard(task)
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    async def _serve(
        self,
        lease: Lease,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> asyncio.StreamWriter:
        policy = lease.policy
        names = {name.lower(): value for name, value in headers}
        if method == "CONNECT":
            url = _connect_target(target)
        elif method in ("GET", "HEAD"):
            if names.get("content-length", "0").strip() != "0" or "transfer-encoding" in names:
                raise _Refused(400, "Bad Request", "a GET with a body")
            url = _absolute_target(target)
        else:
            raise _Refused(405, "Method Not Allowed", f"method {method[:16]!r}")
        try:
            addrs = await check_host(url, lease.allow, policy.connect_timeout_s, WHAT)
        except CVServeError as exc:
            status = 504 if exc.status == 504 else 403
            raise _Refused(status, "Forbidden" if status == 403 else "Gateway Timeout",
                           f"{exc.message} (the source, a redirect or a playlist named it; "
                           "an operator admits a network with --allow-stream-net)") from None  # fmt: skip
        port = url.port or (443 if url.scheme == "https" else 80)
        up_reader, upstream = await _connect(addrs, port, policy.connect_timeout_s, url.host)
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _relay([(reader, upstream), (up_reader, writer)], policy.idle_timeout_s)
            return upstream
        path = url.raw_path.decode("ascii") or "/"
        kept = [(n, v) for n, v in headers if n.lower() not in _HOP_HEADERS]
        upstream.write(_head(f"{method} {path} HTTP/1.1", kept + [("Connection", "close")]))
        await upstream.drain()
        try:
            status, response = await asyncio.wait_for(
                _read_head(up_reader, response=True), policy.idle_timeout_s
            )
        except (ValueError, asyncio.LimitOverrunError):
            raise _Refused(502, "Bad Gateway", f"{url.host} sent no valid HTTP answer") from None
        kept = [(n, v) for n, v in response if n.lower() not in _HOP_HEADERS]
        writer.write(_head(status, kept + [("Connection", "close")]))
        await writer.drain()
        await _relay([(reader, None), (up_reader, writer)], policy.idle_timeout_s)
        return upstream


# -- HTTP/1.1 pieces -----------------------------------------------------------------------------


async def _read_head(reader: asyncio.StreamReader, response: bool = False) -> Any:
    """(method, target, headers) of a request, or (status line, headers) of a response."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
    except asyncio.LimitOverrunError:
        if response:
            raise
        raise _Refused(431, "Request Header Fields Too Large", "request head too large") from None
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            if response:
                raise ValueError("bad header")
            raise _Refused(400, "Bad Request", "malformed request head")
        headers.append((name, value.strip()))
    if response:
        if not lines[0].startswith("HTTP/1."):
            raise ValueError("not HTTP")
        return lines[0], headers
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(400, "Bad Request", "malformed request line")
    return parts[0], parts[1], headers


def _token(headers: list[tuple[str, str]]) -> str | None:
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


def _connect_target(target: str) -> httpx.URL:
    host, colon, port = target.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise _Refused(400, "Bad Request", "CONNECT needs host:port")
    try:
        return parse_url(f"https://{host}:{port}/", WHAT)
    except CVServeError as exc:
        raise _Refused(403, "Forbidden", exc.message) from None


def _absolute_target(target: str) -> httpx.URL:
    if not target.lower().startswith("http://"):
        raise _Refused(400, "Bad Request", "a proxy request names an absolute http:// URL")
    try:
        return parse_url(target, WHAT)
    except CVServeError as exc:
        raise _Refused(403, "Forbidden", exc.message) from None


async def _connect(
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
    raise _Refused(502, "Bad Gateway", f"cannot connect to {host}:{port}")


def _head(first: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _answer(writer: asyncio.StreamWriter, refused: _Refused) -> None:
    body = (refused.message + "\n").encode("utf-8", "replace")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    if refused.status == 407:
        headers.append(("Proxy-Authenticate", f'Basic realm="{REALM}"'))
    try:
        writer.write(_head(f"HTTP/1.1 {refused.status} {refused.reason}", headers) + body)
        await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        pass


async def _relay(
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


def _hide_no_proxy() -> None:
    """FFmpeg would bypass the proxy for hosts in `no_proxy`: it must not see that variable."""
    value = os.environ.get("no_proxy")
    if value is None:
        return
    os.environ["NO_PROXY"] = value  # where both are read, the lowercase one won
    del os.environ["no_proxy"]
    log.warning(
        "moved no_proxy to NO_PROXY: FFmpeg reads only the lowercase one and would let "
        "stream requests to the hosts it names bypass the stream guard"
    )


PROXY = StreamProxy()
