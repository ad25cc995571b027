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
import contextlib
import logging
import os
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cvserve.errors import CVServeError
from cvserve.fetch import AllowList, check_host
from cvserve.streams.proxy_wire import (
    HEAD_LIMIT,
    HOP_HEADERS,
    WHAT,
    Refused,
    absolute_target,
    answer,
    connect,
    connect_target,
    head,
    read_head,
    relay,
    token,
)

log = logging.getLogger("cvserve.streams")

MAX_CONNECTIONS = 128  # at once, all streams together
MAX_PER_LEASE = 8  # at once, one stream (an HLS stream uses two; redirects are sequential)


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
                raise Refused(503, "Service Unavailable", "too many stream connections")
            method, target, headers = await read_head(reader)
            lease = self._leases.get(token(headers) or "")
            if lease is None:
                raise Refused(407, "Proxy Authentication Required", "no stream lease")
            if len(lease.tasks) >= MAX_PER_LEASE:
                raise Refused(503, "Service Unavailable", "too many connections for a stream")
            assert task is not None
            lease.tasks.add(task)
            upstream = await self._serve(lease, method, target, headers, reader, writer)
        except Refused as refused:
            if refused.status == 403 and lease is not None:
                lease.refusals.append(refused.message)
                log.warning("stream guard: %s", refused.message)
            await answer(writer, refused)
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
            url = connect_target(target)
        elif method in ("GET", "HEAD"):
            if names.get("content-length", "0").strip() != "0" or "transfer-encoding" in names:
                raise Refused(400, "Bad Request", "a GET with a body")
            url = absolute_target(target)
        else:
            raise Refused(405, "Method Not Allowed", f"method {method[:16]!r}")
        try:
            addrs = await check_host(url, lease.allow, policy.connect_timeout_s, WHAT)
        except CVServeError as exc:
            status = 504 if exc.status == 504 else 403
            raise Refused(status, "Forbidden" if status == 403 else "Gateway Timeout",
                           f"{exc.message} (the source, a redirect or a playlist named it; "
                           "an operator admits a network with --allow-stream-net)") from None  # fmt: skip
        port = url.port or (443 if url.scheme == "https" else 80)
        up_reader, upstream = await connect(addrs, port, policy.connect_timeout_s, url.host)
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await relay([(reader, upstream), (up_reader, writer)], policy.idle_timeout_s)
            return upstream
        path = url.raw_path.decode("ascii") or "/"
        kept = [(n, v) for n, v in headers if n.lower() not in HOP_HEADERS]
        upstream.write(head(f"{method} {path} HTTP/1.1", kept + [("Connection", "close")]))
        await upstream.drain()
        try:
            status, response = await asyncio.wait_for(
                read_head(up_reader, response=True), policy.idle_timeout_s
            )
        except (ValueError, asyncio.LimitOverrunError):
            raise Refused(502, "Bad Gateway", f"{url.host} sent no valid HTTP answer") from None
        kept = [(n, v) for n, v in response if n.lower() not in HOP_HEADERS]
        writer.write(head(status, kept + [("Connection", "close")]))
        await writer.drain()
        await relay([(reader, None), (up_reader, writer)], policy.idle_timeout_s)
        return upstream


# -- HTTP/1.1 pieces -----------------------------------------------------------------------------


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
