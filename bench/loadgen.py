"""A deliberately cheap HTTP/1.1 load generator (keep-alive, fixed concurrency).

The benchmark machine has few cores and the client shares them with the server, so the
client must cost almost nothing: requests are pre-built bytes, responses are parsed only
far enough to find their length, and everything runs on one asyncio loop in its own
process. Run as a module: it prints one JSON object with per-request latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


def build_request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        low = line.lower()
        if low.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
        elif low.startswith(b"transfer-encoding:") and b"chunked" in low:
            chunked = True
    if chunked:
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            total += size
            if size == 0:
                return status, total
    await reader.readexactly(length)
    return status, length


async def _reopen(
    writer: asyncio.StreamWriter, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A new connection in place of one the server closed."""
    writer.close()
    return await asyncio.open_connection(host, port)


async def _worker(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    max_requests: int,
    counter: list[int],
    latencies: list[float],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at and counter[0] < max_requests:
            counter[0] += 1
            t0 = time.perf_counter()
            writer.write(request)
            try:
                status, _ = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed the connection without an answer (a proxy reloading
                # its configuration closes its idle keep-alive connections): counted as an
                # error, and the worker goes on over a new connection.
                errors.append("connection closed without an answer")
                reader, writer = await _reopen(writer, host, port)
                continue
            dt = time.perf_counter() - t0
            if status != 200:
                errors.append(f"HTTP {status}")
                continue
            latencies.append(dt)
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    duration_s: float,
    warmup: int = 2,
    max_requests: int = 1_000_000,
) -> dict[str, object]:
    # Warm-up requests on one connection (loads the model, fills caches); not measured.
    reader, writer = await asyncio.open_connection(host, port)
    for _ in range(warmup):
        writer.write(request)
        try:
            status, _ = await _read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError):  # as in _worker; not measured
            reader, writer = await _reopen(writer, host, port)
            continue
        if status != 200:
            writer.close()
            return {"error": f"warm-up answered HTTP {status}"}
    writer.close()
    latencies: list[float] = []
    errors: list[str] = []
    counter = [0]
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stop_at = t0 + duration_s
    await asyncio.gather(
        *(
            _worker(host, port, request, stop_at, max_requests, counter, latencies, errors)
            for _ in range(concurrency)
        )
    )
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "wall_s": wall,
        "ok": len(latencies),
        "errors": errors[:5],
        "error_count": len(errors),
        "latencies_s": latencies,
        "client_cpu_s": time.process_time() - cpu0,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--content-type", default="application/x-www-form-urlencoded")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    a = p.parse_args()
    with open(a.body_file, "rb") as f:
        body = f.read()
    request = build_request(a.host, a.port, a.path, body, a.content_type)
    result = asyncio.run(
        run_load(a.host, a.port, request, a.concurrency, a.duration, a.warmup, a.max_requests)
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
