"""fetch_image: SSRF refusals (no DNS, no connection), pinning, redirects, caps, deadlines.

Only a threaded HTTP server on 127.0.0.1 (random port) is contacted; it is reachable only
because each test allow-lists it explicitly.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import pytest

from cvserve.errors import BadRequest, CVServeError, DeadlineExceeded, PayloadTooLarge
from cvserve.fetch import fetch_image
from cvserve.settings import Settings

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
MAX_BYTES = 4096


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        if "Content_Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host", ""), self.client_address[0]))
        port = self.server.server_address[1]
        path = self.path
        if path == "/img":
            self._send(200, IMAGE, Content_Type="image/png")
        elif path == "/missing":
            self._send(404, b"nope")
        elif path == "/big-declared":
            self._send(200, b"x" * 10, Content_Length=str(MAX_BYTES * 10))
        elif path == "/big-stream":  # HTTP/1.0, no Content-Length: body ends at close
            self.send_response(200)
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"x" * 1024)
        elif path == "/gzip":
            self._send(200, b"\x1f\x8b", Content_Encoding="gzip")
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(60):  # ~3 s at most; the client gives up long before
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif path == "/to-img":
            self._send(302, Location="/img")
        elif path == "/loop":
            self._send(302, Location="/loop")
        elif path == "/to-loopback":
            self._send(302, Location=f"http://127.0.0.1:{port}/x")
        elif path == "/to-file":
            self._send(301, Location="file:///etc/passwd")
        else:
            self._send(500)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str, str]]


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def port(server: _Server) -> int:
    server.seen.clear()
    return server.server_address[1]


def _settings(*allow: str, **kw: Any) -> Settings:
    kw.setdefault("fetch_max_bytes", MAX_BYTES)
    kw.setdefault("fetch_total_timeout_s", 3.0)
    kw.setdefault("fetch_connect_timeout_s", 1.0)
    return Settings(allow_url_hosts=allow, **kw)


def _run(url: str, settings: Settings) -> bytes:
    return asyncio.run(fetch_image(url, settings))


@pytest.fixture
def dialed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address the pinned backend really dials (after substitution)."""
    calls: list[str] = []
    real = httpcore.AnyIOBackend.connect_tcp

    async def spy(self: Any, host: str, port: int, *args: Any, **kw: Any) -> Any:
        calls.append(host)
        return await real(self, host, port, *args, **kw)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", spy)
    return calls


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Make loop.getaddrinfo answer `answers[host]` (one list per successive call)."""
    lookups: list[str] = []
    real = asyncio.base_events.BaseEventLoop.getaddrinfo

    async def fake(self: Any, host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        lookups.append(host)
        if host not in answers:
            return await real(self, host, port, *args, **kw)
        seq = answers[host]
        ips = seq.pop(0) if len(seq) > 1 else seq[0]
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port),
            )
            for ip in ips
        ]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", fake)
    return lookups


SSRF_CORPUS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:9001/x",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://app.localhost/",
    "http://[::1]/",
    "http://[::]/",
    "http://10.0.0.1/",
    "http://10.255.1.2:8080/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.1.1/",
    "http://100.64.0.1/",
    "http://100.100.100.200/",
    "http://0.0.0.0/",
    "http://0/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f000001/",
    "http://0x7f.0.0.1/",
    "http://127.1/",
    "http://10.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://192.0.2.1/",
    "https://127.0.0.1/",
    "file:///etc/passwd",
    "ftp://example.com/a.png",
    "gopher://127.0.0.1:6379/_INFO",
    "dict://127.0.0.1:11211/",
    "javascript:alert(1)",
    "//example.com/a.png",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/",
    "http://instance-data/latest/",
    "http://foo.internal/",
    "http://user:pw@example.com/",
    "http://example.com@127.0.0.1/",
    "http://example.com\\@127.0.0.1/",
    "http://example.com /",
    "http:///a.png",
    "http://exa%6dple.com/",
]


@pytest.mark.parametrize("url", SSRF_CORPUS)
def test_ssrf_corpus_refused_without_dns_or_connection(
    url: str, monkeypatch: pytest.MonkeyPatch, dialed: list[str]
) -> None:
    lookups = _fake_dns(monkeypatch, {})
    with pytest.raises(BadRequest) as info:
        _run(url, _settings())
    assert info.value.status == 400
    assert "image URL" in info.value.message
    assert dialed == [] and lookups == []


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://0x7f.0.0.1/", "means 127.0.0.1"),
        ("http://[::ffff:127.0.0.1]/", "embedding 127.0.0.1, a loopback"),
        ("http://169.254.169.254/", "metadata"),
        ("http://metadata.google.internal/", "metadata"),
        ("ftp://example.com/", "'ftp' is not http/https"),
    ],
)
def test_refusals_name_the_problem(url: str, expect: str) -> None:
    with pytest.raises(BadRequest, match="image URL refused") as info:
        _run(url, _settings())
    assert expect in info.value.message


def test_any_forbidden_resolved_address_refuses(
    monkeypatch: pytest.MonkeyPatch, dialed: list[str]
) -> None:
    _fake_dns(monkeypatch, {"mixed.example": [["93.184.216.34", "10.0.0.7"]]})
    with pytest.raises(BadRequest, match=r"mixed.example resolves to 10.0.0.7.*private"):
        _run("http://mixed.example/a.png", _settings())
    _fake_dns(monkeypatch, {"v6.example": [["2606:4700::1", "::ffff:192.168.0.1"]]})
    with pytest.raises(BadRequest, match="192.168.0.1, a private"):
        _run("http://v6.example/a.png", _settings())
    assert dialed == []


def test_unresolvable_host_is_400(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(*args: Any, **kw: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", fail)
    with pytest.raises(BadRequest, match="cannot resolve host nowhere.example"):
        _run("http://nowhere.example/", _settings())


def test_slow_dns_hits_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(5)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", slow)
    with pytest.raises(DeadlineExceeded, match="DNS lookup"):
        _run("http://slow.example/", _settings(fetch_connect_timeout_s=0.2))


def test_allow_listed_ip_serves_image(port: int, server: _Server) -> None:
    assert _run(f"http://127.0.0.1:{port}/img", _settings("127.0.0.1")) == IMAGE
    assert _run(f"http://127.0.0.1:{port}/img", _settings("127.0.0.0/8")) == IMAGE
    assert server.seen[0][:2] == ("/img", f"127.0.0.1:{port}")


def test_allow_list_does_not_cover_other_addresses(port: int, server: _Server) -> None:
    with pytest.raises(BadRequest, match="loopback"):
        _run(f"http://127.0.0.1:{port}/img", _settings("10.0.0.0/8", "example.com"))
    assert server.seen == []


def test_upstream_404(port: int) -> None:
    with pytest.raises(BadRequest, match="image URL returned HTTP 404"):
        _run(f"http://127.0.0.1:{port}/missing", _settings("127.0.0.1"))


def test_declared_oversize_body_is_413(port: int) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        _run(f"http://127.0.0.1:{port}/big-declared", _settings("127.0.0.1"))
    assert info.value.status == 413


def test_streamed_oversize_body_is_413(port: int) -> None:
    with pytest.raises(PayloadTooLarge, match=f"exceeds {MAX_BYTES} bytes"):
        _run(f"http://127.0.0.1:{port}/big-stream", _settings("127.0.0.1"))


def test_compressed_body_refused(port: int) -> None:
    with pytest.raises(BadRequest, match="Content-Encoding"):
        _run(f"http://127.0.0.1:{port}/gzip", _settings("127.0.0.1"))


def test_slow_body_hits_total_deadline(port: int) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        _run(f"http://127.0.0.1:{port}/slow", _settings("127.0.0.1", fetch_total_timeout_s=0.4))
    assert info.value.status == 504
    assert time.monotonic() - started < 2


def test_relative_redirect_followed(port: int, server: _Server) -> None:
    assert _run(f"http://127.0.0.1:{port}/to-img", _settings("127.0.0.1")) == IMAGE
    assert [s[0] for s in server.seen] == ["/to-img", "/img"]


def test_redirect_loop_capped(port: int, server: _Server) -> None:
    with pytest.raises(BadRequest, match="redirected more than 2 times"):
        _run(f"http://127.0.0.1:{port}/loop", _settings("127.0.0.1", fetch_max_redirects=2))
    assert len(server.seen) == 3


def test_redirect_to_forbidden_scheme_refused(port: int) -> None:
    with pytest.raises(BadRequest, match="redirect #1 refused: scheme 'file'"):
        _run(f"http://127.0.0.1:{port}/to-file", _settings("127.0.0.1"))


def test_redirect_to_forbidden_host_refused_on_the_hop(port: int, server: _Server) -> None:
    # Only the *name* localhost is trusted; the redirect to the bare IP is re-checked.
    with pytest.raises(BadRequest, match="redirect #1 refused: 127.0.0.1 is a loopback") as info:
        _run(f"http://localhost:{port}/to-loopback", _settings("localhost"))
    assert info.value.status == 400
    assert [s[0] for s in server.seen] == ["/to-loopback"]


def test_connection_pinned_to_checked_address(
    port: int, server: _Server, monkeypatch: pytest.MonkeyPatch, dialed: list[str]
) -> None:
    # First answer is the (allow-listed) server; any later lookup would say 127.0.0.2,
    # where nothing listens. Success proves the one checked answer was the one dialed.
    lookups = _fake_dns(monkeypatch, {"pin.test": [["127.0.0.1"], ["127.0.0.2"]]})
    assert _run(f"http://pin.test:{port}/img", _settings("pin.test")) == IMAGE
    assert lookups == ["pin.test"]
    assert dialed == ["127.0.0.1"]
    assert server.seen == [("/img", f"pin.test:{port}", "127.0.0.1")]  # Host header kept


def test_rebinding_answer_never_dialed(monkeypatch: pytest.MonkeyPatch, dialed: list[str]) -> None:
    # A public answer at check time, loopback afterwards: only the public one is dialed.
    lookups = _fake_dns(monkeypatch, {"rebind.example": [["93.184.216.34"], ["127.0.0.1"]]})

    async def no_network(self: Any, host: str, *args: Any, **kw: Any) -> Any:
        dialed.append(host)
        raise httpcore.ConnectError("offline test")

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", no_network)
    with pytest.raises(BadRequest, match="could not be fetched from rebind.example"):
        _run("http://rebind.example/a.png", _settings())
    assert lookups == ["rebind.example"]
    assert dialed == ["93.184.216.34"]


def test_errors_are_cvserve_errors_only(port: int) -> None:
    # Connection refused on an allow-listed address: a clean 400, not a raw httpx error.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(CVServeError) as info:
        _run(f"http://127.0.0.1:{closed_port}/img", _settings("127.0.0.1"))
    assert info.value.status == 400
