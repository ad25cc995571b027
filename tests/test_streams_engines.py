"""Video streams through both engines (tests/support/engines.py): `cvserve serve`, and
`cvserve serve --ray` whose streams run on stream workers (Ray actors) calling the model
replicas. The same clip gives the same events on both; on Ray, a stream worker killed
mid-stream hands its stream to the other worker, and the stream says so.

Real servers, a real two-node Ray cluster, jobs and streams in a real PostgreSQL, a real
ONNX detector of two coloured squares, the real trackers library.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

pytest.importorskip("av", reason="the streams extra (av) is not installed")
pytest.importorskip("trackers", reason="the streams extra (trackers) is not installed")

from tests.support.engines import (  # noqa: E402
    ENGINES,
    KEY,
    ON_RAY,
    RAY_STREAM_WORKERS,
    STREAM_LEASE_S,
    STREAM_MODEL,
    Served,
    served_by,
)
from tests.support.streams_support import sse_events, wait_for  # noqa: E402

FINAL = ("completed", "failed", "stopped")
VOLATILE = ("time", "pts", "detection_id")  # clocks, random ids; the rest is the same


def client_for(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=30, params={"api_key": KEY})


def clip(served: Served, name: str) -> str:
    return f"file://{served.store.parent / 'videos' / name}"


def start(c: httpx.Client, **body: Any) -> dict[str, Any]:
    r = c.post("/streams", json={"model_id": STREAM_MODEL, **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def status_of(c: httpx.Client, stream_id: str) -> dict[str, Any]:
    r = c.get(f"/streams/{stream_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def crossing_events(served: Served) -> list[dict[str, Any]]:
    line = {"name": "mid", "start": [320, 0], "end": [320, 480]}
    zone = {"name": "right", "polygon": [[320, 0], [640, 0], [640, 480], [320, 480]]}
    with client_for(served) as c:
        obj = start(c, source=clip(served, "crossing.mp4"), tracker="bytetrack",
                    lines=[line], zones=[zone], params={"confidence": 50})  # fmt: skip
        frames = [
            _steady(d)
            for kind, _, d in sse_events(c, f"/streams/{obj['id']}/events?from=0")
            if kind == "frame"
        ]
        final = wait_for(lambda: status_of(c, obj["id"]), lambda o: o["status"] in FINAL, 30)
    assert final["status"] == "completed", final
    return frames


def _steady(event: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in event.items() if k not in VOLATILE}
    out["predictions"] = [
        {k: v for k, v in p.items() if k not in VOLATILE} for p in event["predictions"]
    ]
    return out


@pytest.fixture(scope="module")
def local_events(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return crossing_events(served_by(request, "local"))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_tracked_crossing_gives_the_same_events_on_both_engines(request, engine, local_events):
    served = served_by(request, engine)
    frames = crossing_events(served) if engine == "ray" else local_events
    assert [f["frame"] for f in frames] == list(range(40))
    for f in frames:
        assert sorted(p["class"] for p in f["predictions"]) == ["green", "red"]
    assert all(p["tracker_id"] is not None for f in frames[3:] for p in f["predictions"])
    # Two squares cross the line once each, in opposite directions: counted once each.
    assert frames[-1]["counts"]["lines"]["mid"] == {"in": {"red": 1}, "out": {"green": 1}}
    ids = {(p["class"], p["tracker_id"]) for f in frames[2:] for p in f["predictions"]}
    assert len(ids) == 2, ids  # identities hold through the crossing
    if engine == "ray":
        assert frames == local_events  # every prediction, id and count alike


@pytest.mark.parametrize("engine", ENGINES)
def test_the_stream_doors_answer_alike(request, engine):
    served = served_by(request, engine)
    with client_for(served) as c:
        obj = start(c, source=clip(served, "long.mp4"), realtime=True)
        assert (obj["worker"] is None) == (engine == "local"), obj
        running = wait_for(
            lambda: status_of(c, obj["id"]), lambda o: o["stats"]["frames_inferred"] >= 3, 20
        )
        assert running["status"] == "running" and running["stats"]["resumes"] == 0
        jpeg = c.get(f"/streams/{obj['id']}/frame.jpg")
        assert jpeg.status_code == 200 and jpeg.content[:2] == b"\xff\xd8"
        with c.stream("GET", f"/streams/{obj['id']}/mjpeg") as mjpeg:
            assert mjpeg.headers["content-type"].startswith("multipart/x-mixed-replace")
            first = next(mjpeg.iter_bytes())
            assert first.startswith(b"--cvserveframe")
        listed = {o["id"]: o for o in c.get("/streams").json()["items"]}
        assert listed[obj["id"]]["status"] == "running"
        stopped = c.delete(f"/streams/{obj['id']}").json()
        assert stopped["status"] == "stopped"
        assert status_of(c, obj["id"])["status"] == "stopped"
        assert c.delete(f"/streams/{obj['id']}").json()["status"] == "stopped"  # again: same
        assert c.get("/streams/s_nope").status_code == 404
        assert c.get("/streams/s_nope/events").status_code == 404
        bad = c.post("/streams", json={"source": "gopher://x/1", "model_id": STREAM_MODEL})
        assert bad.status_code == 400 and "scheme" in bad.json()["message"]
        no_model = c.post("/streams", json={"source": clip(served, "long.mp4"),
                                            "model_id": "nope/1"})  # fmt: skip
        assert no_model.status_code == 404
        # /metrics counts the held streams by status (on Ray, the workers' as of <= 2 s ago).
        wait_for(
            lambda: c.get("/metrics").text,
            lambda text: (
                'cvserve_streams{status="stopped"} 0.0' not in text
                and 'cvserve_streams{status="stopped"}' in text
            ),
            10,
        )


def _worker_pid(name: str) -> int:
    import ray

    handle = ray.get_actor(name, namespace="cvserve-streams")
    return int(ray.get(handle.pid.remote(), timeout=30))


@pytest.mark.parametrize("engine", [pytest.param("ray", id=ON_RAY)])
def test_a_killed_stream_worker_hands_its_stream_to_another(request, engine):
    served = served_by(request, engine)
    assert RAY_STREAM_WORKERS >= 2
    with client_for(served) as c:
        obj = start(c, source=clip(served, "long.mp4"), realtime=True)
        sid, first = obj["id"], obj["worker"]
        wait_for(lambda: status_of(c, sid), lambda o: o["stats"]["frames_inferred"] >= 5, 20)
        statuses: list[dict[str, Any]] = []
        frames_after: list[int] = []

        def listen() -> None:  # a listener that stays connected through the move
            with client_for(served) as lc:
                for kind, _, data in sse_events(lc, f"/streams/{sid}/events", timeout=60):
                    if kind == "status":
                        statuses.append(data)
                    elif any(s["status"] == "reconnecting" for s in statuses):
                        frames_after.append(data["frame"])
                        if len(frames_after) >= 5:
                            return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(1.0)
        os.kill(_worker_pid(first), signal.SIGKILL)
        # Until another worker runs it, the stream says its worker is gone, and which.
        gap = wait_for(lambda: status_of(c, sid), lambda o: o["status"] == "reconnecting", 20)
        assert first in gap["error"], gap
        moved = wait_for(
            lambda: status_of(c, sid),
            lambda o: o["worker"] not in (None, first) and o["stats"]["frames_inferred"] >= 3,
            STREAM_LEASE_S * 6,
        )
        assert moved["status"] == "running" and moved["stats"]["resumes"] == 1, moved
        listener.join(30)
        assert not listener.is_alive(), statuses
        lost = [s for s in statuses if s["status"] == "reconnecting"]
        assert lost and first in lost[0]["error"], statuses
        assert len(frames_after) >= 5
        assert c.delete(f"/streams/{sid}").json()["status"] == "stopped"
        # The killed worker is back (Ray restarts it) and serves new streams.
        wait_for(lambda: _worker_pid(first), lambda pid: pid > 0, 60)
