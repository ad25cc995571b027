"""Helpers for the stream guard tests: HTTP(S) origins on loopback addresses that serve an
HLS clip, redirect where a test says, list segments on another host, and record who asked."""

from __future__ import annotations

import datetime
import functools
import ssl
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Handler(SimpleHTTPRequestHandler):
    origin: Origin

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.origin.seen.append(parts.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts.path == "/elsewhere.m3u8":  # the clip's playlist, its segments on `host`
            text = (self.origin.folder / "index.m3u8").read_text()
            body = text.replace("index0.ts", f"http://{query['host']}/index0.ts").encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.apple.mpegurl")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


class Origin:
    """An HTTP (or, given a cert, HTTPS) server on `ip` serving `folder`; `seen` holds the
    paths asked for, so a test can tell that a forbidden host was never reached."""

    def __init__(self, folder: Path, ip: str = "127.0.0.1", cert: Path | None = None) -> None:
        self.folder = folder
        self.seen: list[str] = []
        handler = type("Handler", (_Handler,), {"origin": self})
        self.server = ThreadingHTTPServer(
            (ip, 0), functools.partial(handler, directory=str(folder))
        )
        self.server.daemon_threads = True
        scheme = "http"
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.host = f"{ip}:{self.server.server_address[1]}"
        self.url = f"{scheme}://{self.host}"

    def __enter__(self) -> Origin:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed(folder: Path) -> Path:
    """A key and self-signed certificate for 127.0.0.1 in one PEM file (FFmpeg's tls does
    not verify by default, so any certificate will do)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = folder / "origin.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path
