"""Live video streams from a real RTSP server (gst-rtsp-server, tests/support/rtsp_server.py):
reconnect after the server goes away and comes back, a source that never answers fails in
its bound, DELETE in every state, credentials never shown, and a bounded load test with
photo traffic that leaves no reader thread behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("av", reason="the streams extra (av) is not installed")
pytest.importorskip("trackers", reason="the streams extra (trackers) is not installed")

from cvserve.models.importers import import_model  # noqa: E402
from cvserve.models.store import ModelStore  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402
from tests.support.streams_support import (  # noqa: E402
    RtspServer,
    crossing_frames,
    free_port,
    hls_clip,
    rtsp_available,
    two_colour_finder,
    wait_for,
    write_clip,
)
from tests.support.synthetic import png_bytes  # noqa: E402

CONNECT_DEADLINE_S = 3.0


def status_of(client: httpx.Client, stream_id: str) -> dict[str, Any]:
    return dict(client.get(f"/streams/{stream_id}").json())


def until(client: httpx.Client, stream_id: str, want: Any, timeout: float = 20) -> dict:
    check = want if callable(want) else (lambda o: o["status"] == want)
    return wait_for(lambda: status_of(client, stream_id), check, timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    why = rtsp_available()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("rtsp")
    store = ModelStore(root / "models")
    import_model(two_colour_finder(root / "two.onnx", ("red", "green")), "two/1", store)
    videos = root / "videos"
    videos.mkdir()
    # 20 s at 10 fps: long enough to outlive every test that plays it (each client plays
    # it from the start, in real time).
    clip = write_clip(videos / "live.mp4", crossing_frames(200, 320, 240), fps=10)
    short = write_clip(videos / "short.mp4", crossing_frames(10, 320, 240), fps=10)
    rtsp = RtspServer(clip).start()
    settings = {
        "stream_dirs": (str(videos),),
        "allow_stream_nets": ("127.0.0.1",),
        "max_streams": 8,
        "stream_open_timeout_s": 2.0,
        "stream_read_timeout_s": 2.0,
        "stream_connect_deadline_s": CONNECT_DEADLINE_S,
        "stream_retry_max_s": 1.0,
    }
    try:
        with (
            LiveServer(root / "models", **settings) as server,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            yield {"client": client, "rtsp": rtsp, "short": short, "videos": videos}
    finally:
        rtsp.stop()


def start(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("model_id", "two/1")
    r = client.post("/streams", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_rtsp_stream_reconnects_after_the_server_restarts(world):
    client, rtsp = world["client"], world["rtsp"]
    obj = start(client, source=rtsp.url, tracker="bytetrack")
    until(client, obj["id"], lambda o: o["stats"]["frames_inferred"] >= 5)
    rtsp.stop()
    down = until(client, obj["id"], "reconnecting")
    assert down["error"] and down["stats"]["reconnects"] >= 1
    seen = down["stats"]["frames_inferred"]
    rtsp.start()
    back = until(
        client,
        obj["id"],
        lambda o: o["status"] == "running" and o["stats"]["frames_inferred"] > seen + 5,
    )
    assert back["error"] is None
    # The newest-frame rule: a live source never queues, so what was read is accounted for.
    stats = back["stats"]
    assert stats["frames_inferred"] + stats["frames_dropped"] <= stats["frames_read"]
    r = client.delete(f"/streams/{obj['id']}")
    assert r.json()["status"] == "stopped"


def test_a_source_that_never_answers_fails_within_its_bound_without_showing_secrets(world, caplog):
    caplog.set_level("DEBUG")  # every log line the stream writes, in any thread
    client = world["client"]
    port = free_port()  # nothing listens there
    began = time.monotonic()
    obj = start(client, source=f"rtsp://admin:hunter2@127.0.0.1:{port}/cam?token=s3cret")
    assert obj["source"] == f"rtsp://***@127.0.0.1:{port}/cam?***"
    final = until(client, obj["id"], "failed", timeout=CONNECT_DEADLINE_S + 10)
    assert time.monotonic() - began <= CONNECT_DEADLINE_S + 3
    assert "gave up after" in final["error"] and "cannot open" in final["error"]
    metrics = client.get("/metrics").text
    assert 'cvserve_streams{status="failed"}' in metrics
    assert 'cvserve_stream_frames_total{fate="read",model="two/1"}' in metrics
    shown = client.get("/streams").text + str(final) + metrics + caplog.text
    assert f"stream {obj['id']} failed" in caplog.text
    assert "hunter2" not in shown and "admin" not in shown and "s3cret" not in shown


def test_delete_stops_a_stream_in_every_state(world):
    client, rtsp = world["client"], world["rtsp"]
    never = start(client, source=f"rtsp://127.0.0.1:{free_port()}/cam")  # starting
    assert never["status"] == "starting"
    live = start(client, source=rtsp.url)
    done = start(client, source=f"file://{world['short']}")
    failing = start(client, source=f"rtsp://127.0.0.1:{free_port()}/cam")
    until(client, live["id"], "running")
    until(client, done["id"], "completed")
    until(client, failing["id"], "failed", timeout=CONNECT_DEADLINE_S + 10)
    for obj in (never, live, done, failing):
        began = time.monotonic()
        r = client.delete(f"/streams/{obj['id']}")
        assert time.monotonic() - began < 1.0  # at once, whatever the reader is doing
        assert r.status_code == 200 and r.json()["status"] == "stopped", r.text
        assert status_of(client, obj["id"])["status"] == "stopped"
    # Reconnecting: a second RTSP server that goes away.
    other = RtspServer(world["rtsp"].clip).start()
    try:
        obj = start(client, source=other.url)
        until(client, obj["id"], "running")
        other.stop()
        until(client, obj["id"], "reconnecting")
        assert client.delete(f"/streams/{obj['id']}").json()["status"] == "stopped"
    finally:
        other.stop()


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cvserve-stream-reader"]


def test_load_streams_and_photos_then_no_reader_thread_is_left(world):
    client, rtsp = world["client"], world["rtsp"]
    streams = [
        start(client, source=rtsp.url, tracker="bytetrack")["id"],
        start(client, source=rtsp.url, max_fps=5)["id"],
        start(client, source=f"file://{Path(world['rtsp'].clip)}", realtime=True,
              tracker="sort")["id"],
    ]  # fmt: skip
    photo = png_bytes(crossing_frames(3)[1])
    stop_at = time.monotonic() + 8.0
    answered: list[int] = []

    def photos() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            while time.monotonic() < stop_at:
                answered.append(c.post("/two/1", content=photo).status_code)

    with ThreadPoolExecutor(2) as pool:
        for _ in range(2):
            pool.submit(photos)
    assert answered and set(answered) == {200}, set(answered)
    for stream_id in streams:
        obj = status_of(client, stream_id)
        assert obj["status"] == "running", obj
        assert obj["stats"]["frames_inferred"] > 10, obj
        assert obj["stats"]["fps_out"] > 0 and obj["stats"]["latency_ms"]["p50"] is not None
        assert client.delete(f"/streams/{stream_id}").json()["status"] == "stopped"
    deadline = time.monotonic() + 10
    while reader_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reader_threads() == [], reader_threads()


def test_http_sources_hls_and_mjpeg(world, tmp_path):
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    client = world["client"]
    playlist = hls_clip(tmp_path / "hls")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(playlist.parent))
    )
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        hls = start(client, source=f"http://127.0.0.1:{http.server_address[1]}/index.m3u8")
        until(client, hls["id"], lambda o: o["stats"]["frames_inferred"] >= 3)
        assert client.delete(f"/streams/{hls['id']}").json()["status"] == "stopped"
    finally:
        http.shutdown()
        http.server_close()
    # MJPEG over HTTP: this server's own annotated frames of another stream.
    camera = start(client, source=f"file://{world['rtsp'].clip}", realtime=True)
    until(client, camera["id"], lambda o: o["stats"]["frames_inferred"] >= 2)
    mjpeg = start(client, source=f"{str(client.base_url).rstrip('/')}/streams/{camera['id']}/mjpeg")
    watched = until(client, mjpeg["id"], lambda o: o["stats"]["frames_inferred"] >= 3)
    assert watched["status"] == "running" and watched["source"].endswith("/mjpeg")
    for obj in (mjpeg, camera):
        assert client.delete(f"/streams/{obj['id']}").json()["status"] == "stopped"


def test_a_silent_server_and_a_stalled_one_never_hang_a_stream(world):
    import os
    import signal
    import socket

    client = world["client"]
    # Accepts the connection and never says a word: the open timeout ends each try.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        began = time.monotonic()
        obj = start(client, source=f"rtsp://127.0.0.1:{silent.getsockname()[1]}/cam")
        final = until(client, obj["id"], "failed", timeout=CONNECT_DEADLINE_S + 10)
        assert time.monotonic() - began <= CONNECT_DEADLINE_S + 3, final
    # Connected, then the server freezes (SIGSTOP): the read timeout notices, it comes back.
    frozen = RtspServer(world["rtsp"].clip).start()
    try:
        obj = start(client, source=frozen.url)
        until(client, obj["id"], lambda o: o["stats"]["frames_inferred"] >= 3)
        assert frozen.proc is not None
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        try:
            until(client, obj["id"], "reconnecting", timeout=10)
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        seen = status_of(client, obj["id"])["stats"]["frames_inferred"]
        until(
            client,
            obj["id"],
            lambda o: o["status"] == "running" and o["stats"]["frames_inferred"] > seen,
        )
        assert client.delete(f"/streams/{obj['id']}").json()["status"] == "stopped"
    finally:
        frozen.stop()
