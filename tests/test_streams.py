"""Video streams (SPEC.md section 9) from files: tracking, line and zone counts, events and
their replay, annotated frames, pacing, bad input, keys, limits, restart.

A real server (uvicorn on a socket), real clips encoded with PyAV at run time, a real ONNX
detector of two coloured squares (tests/support/streams_support.py), the real trackers library.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("av", reason="the streams extra (av) is not installed")
pytest.importorskip("trackers", reason="the streams extra (trackers) is not installed")

from cvserve.models.importers import import_model  # noqa: E402
from cvserve.models.store import ModelStore  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402
from tests.support.streams_support import (  # noqa: E402
    crossing_frames,
    sse_events,
    two_colour_finder,
    wait_for,
    write_clip,
)
from tests.support.synthetic import png_bytes  # noqa: E402
from tests.support.synthetic_store import _cls_model  # noqa: E402

FINAL = ("completed", "failed", "stopped")
RIGHT_HALF = [[320, 0], [640, 0], [640, 480], [320, 480]]


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.videos = root / "videos"
        self.videos.mkdir(parents=True)
        work = root / "work"
        work.mkdir()
        store = ModelStore(self.models)
        import_model(two_colour_finder(work / "two.onnx", ("red", "green")), "two/1", store)
        import_model(_cls_model(work / "cls.onnx"), "cls/1", store)
        self.crossing = write_clip(self.videos / "crossing.mp4", crossing_frames(40))
        self.long = write_clip(self.videos / "long.mp4", crossing_frames(75, 320, 240))
        self.settings: dict[str, Any] = {
            "stream_dirs": (str(self.videos),),
            "max_streams": 3,
            "stream_open_timeout_s": 3.0,
            "stream_read_timeout_s": 3.0,
        }

    def server(self, **overrides: Any) -> LiveServer:
        return LiveServer(self.models, **{**self.settings, **overrides})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("streams"))


@pytest.fixture(scope="module")
def client(env: Env) -> Iterator[httpx.Client]:
    with env.server() as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def start(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/streams", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def finished(client: httpx.Client, stream_id: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: client.get(f"/streams/{stream_id}").json(), lambda o: o["status"] in FINAL, timeout
    )


def frames_of(client: httpx.Client, stream_id: str, query: str = "?from=0") -> list[dict]:
    return [
        d
        for kind, _, d in sse_events(client, f"/streams/{stream_id}/events{query}")
        if kind == "frame"
    ]


# -- tracking, lines, zones ------------------------------------------------------------------


@pytest.mark.parametrize("tracker", ["bytetrack", "sort", "ocsort"])
def test_identities_hold_through_a_crossing_and_counts_are_exact(client, env, tracker):
    line = {"name": "mid", "start": [320, 0], "end": [320, 480]}
    zone = {"name": "right", "polygon": RIGHT_HALF}
    obj = start(
        client, source=f"file://{env.crossing}", model_id="two/1", tracker=tracker,
        lines=[line], zones=[zone], params={"confidence": 50},
    )  # fmt: skip
    assert obj["status"] == "starting" and obj["tracker"] == tracker
    frames = frames_of(client, obj["id"])
    assert [f["frame"] for f in frames] == list(range(40))
    ids: dict[str, set] = {"red": set(), "green": set()}
    crossed = {"red": False, "green": False}
    for f in frames:
        assert f["image"] == {"width": 640, "height": 480}
        by_class = {p["class"]: p for p in f["predictions"]}
        assert sorted(by_class) == ["green", "red"]
        for name, pred in by_class.items():
            if pred["tracker_id"] is not None:
                ids[name].add(pred["tracker_id"])
            crossed[name] |= (pred["x"] > 320) if name == "red" else (pred["x"] < 320)
        # Zone: the boxes whose bottom centre is in the right half, now.
        expected = {n: 1 for n, p in by_class.items() if p["x"] > 320}
        assert f["counts"]["zones"]["right"] == expected, f
        # Line: red crosses left -> right ("in" for a downward line), green right -> left.
        counts = f["counts"]["lines"]["mid"]
        assert counts["in"] == ({"red": 1} if crossed["red"] else {}), f
        assert counts["out"] == ({"green": 1} if crossed["green"] else {}), f
    assert len(ids["red"]) == 1 and len(ids["green"]) == 1, ids  # one identity each
    assert ids["red"] != ids["green"]
    assert all(p["tracker_id"] is not None for f in frames[3:] for p in f["predictions"])
    final = finished(client, obj["id"])
    assert final["status"] == "completed", final
    stats = final["stats"]
    assert stats["frames_read"] == 40 == stats["frames_inferred"] + stats["frames_dropped"]
    assert final["counts"] == {
        "lines": {"mid": {"in": {"red": 1}, "out": {"green": 1}}},
        "zones": {"right": {"red": 1}},
    }


def test_without_a_tracker_predictions_are_the_hosted_ones(client, env):
    obj = start(client, source=str(env.crossing), model_id="two/1", params={"classes": "red"})
    frames = frames_of(client, obj["id"])
    assert len(frames) == 40
    assert all([p["class"] for p in f["predictions"]] == ["red"] for f in frames)
    assert all("tracker_id" not in p for f in frames for p in f["predictions"])
    hosted = client.post("/two/1", content=png_bytes(crossing_frames(40)[0])).json()
    keys = {k for k in hosted["predictions"][0]}
    assert keys == set(frames[0]["predictions"][0])  # the hosted encoder's fields


# -- events, frames ----------------------------------------------------------------------------


def test_events_replay_from_a_frame_or_the_last_event_id(client, env):
    obj = start(client, source=f"file://{env.crossing}", model_id="two/1")
    final = finished(client, obj["id"])
    url = f"/streams/{obj['id']}/events"
    assert [f["frame"] for f in frames_of(client, obj["id"], "?from=25")] == list(range(25, 40))
    events = list(sse_events(client, url, headers={"Last-Event-ID": "30"}))
    assert [e[1] for e in events[:-1]] == [str(i) for i in range(31, 40)]
    assert events[-1][0] == "status" and events[-1][2]["status"] == "completed"
    # An ended stream without either: its buffered events and the final status, then the end.
    everything = list(sse_events(client, url))
    assert [e[2]["status"] for e in everything if e[0] == "status"][-1] == "completed"
    assert len([e for e in everything if e[0] == "frame"]) == 40
    assert everything[-1][2]["stats"] == final["stats"] | {
        k: everything[-1][2]["stats"][k] for k in ("fps_in", "fps_out")
    }
    assert client.get(f"{url}?from=-1").status_code == 400
    assert client.get(url, headers={"Last-Event-ID": "x"}).status_code == 400


def test_frame_jpg_and_mjpeg_show_the_newest_annotated_frame(client, env):
    import simplejpeg

    obj = start(client, source=f"file://{env.crossing}", model_id="two/1", tracker="bytetrack")
    finished(client, obj["id"])
    r = client.get(f"/streams/{obj['id']}/frame.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert simplejpeg.decode_jpeg(r.content).shape == (480, 640, 3)
    with client.stream("GET", f"/streams/{obj['id']}/mjpeg") as resp:
        assert resp.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=")
        body = resp.read()  # the stream has ended: one part, then the response ends
    assert body.startswith(b"--cvserveframe\r\nContent-Type: image/jpeg\r\n")
    assert client.get("/streams/s_nope/frame.jpg").status_code == 404


# -- pacing ----------------------------------------------------------------------------------------


def test_realtime_with_max_fps_drops_stale_frames_and_accounts_for_each(client, env):
    began = time.monotonic()
    obj = start(client, source=f"file://{env.crossing}", model_id="two/1", realtime=True, max_fps=5)
    final = finished(client, obj["id"])
    elapsed = time.monotonic() - began
    stats = final["stats"]
    assert final["status"] == "completed"
    assert elapsed >= 2.3  # 40 frames at 15 fps, at their own pace
    assert stats["frames_read"] == 40 == stats["frames_inferred"] + stats["frames_dropped"]
    assert 8 <= stats["frames_inferred"] <= 17 and stats["frames_dropped"] > 20, stats


def test_a_file_as_fast_as_the_model_allows_drops_nothing_and_max_fps_paces_it(client, env):
    began = time.monotonic()
    obj = start(client, source=f"file://{env.crossing}", model_id="two/1", max_fps=25)
    final = finished(client, obj["id"])
    assert time.monotonic() - began >= 39 / 25 - 0.1
    assert final["stats"]["frames_inferred"] == 40 and final["stats"]["frames_dropped"] == 0


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(env: Env) -> dict[str, Path]:
    import av

    outside = env.root / "outside"
    outside.mkdir()
    secret = write_clip(outside / "secret.mp4", crossing_frames(3))
    (env.videos / "escape.mp4").symlink_to(secret)
    (env.videos / "corrupt.mp4").write_bytes(os.urandom(20_000))
    whole = env.crossing.read_bytes()
    (env.videos / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    # A codec FFmpeg has no decoder for: an MPEG-4 AVI whose FourCC is made up.
    avi = write_clip(env.root / "mpeg4.avi", crossing_frames(3, 320, 240), codec="mpeg4")
    (env.videos / "unknown.avi").write_bytes(avi.read_bytes().replace(b"FMP4", b"ZQZQ"))
    audio = env.videos / "audio.mkv"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return {"secret": secret}


BAD = [
    ({"source": "ftp://example.com/a.mp4"}, 400, "scheme 'ftp'"),
    ({"source": "file:///etc/passwd"}, 400, "not a video file"),
    ({"source": "{outside}"}, 400, "outside the allowed stream dirs"),
    ({"source": "file://{videos}/../outside/secret.mp4"}, 400, "'..'"),
    ({"source": "file://{videos}/escape.mp4"}, 400, "outside the allowed stream dirs"),
    ({"source": "file://{videos}/missing.mp4"}, 400, "does not exist"),
    ({"source": "file://{videos}/corrupt.mp4"}, 400, "cannot read"),
    ({"source": "file://{videos}/truncated.mp4"}, 400, "cannot read"),
    ({"source": "file://{videos}/audio.mkv"}, 400, "no video stream"),
    ({"source": "file://{videos}/unknown.avi"}, 400, "cannot be decoded"),
    ({"source": "rtsp://127.0.0.1:9/cam"}, 400, "loopback"),
    ({"source": "rtsp://10.1.2.3/cam"}, 400, "private"),
    ({"source": "http://169.254.169.254/latest/"}, 400, "metadata"),
    ({"source": "https://localhost/live.m3u8"}, 400, "local"),
    ({"source": "/dev/video0"}, 400, "outside the allowed stream dirs"),
    ({"tracker": "bytetrack", "model_id": "cls/1"}, 400, "need a detector"),
    ({"zones": [{"name": "z", "polygon": RIGHT_HALF}], "model_id": "cls/1"}, 400, "detector"),
    ({"lines": [{"name": "l", "start": [0, 0], "end": [1, 1]}]}, 400, "set tracker"),
    ({"tracker": "deepsort"}, 400, "tracker"),
    ({"params": {"confidence": "lots"}}, 400, "confidence"),
    ({"model_id": "nope/1"}, 404, "not found"),
    ({"surprise": 1}, 400, "surprise"),
]


@pytest.mark.parametrize(("change", "status", "words"), BAD, ids=[b[2] for b in BAD])
def test_bad_input_is_a_clear_4xx_and_photos_still_answer(
    client, env, bad_files, change, status, words
):
    body = {"source": f"file://{env.crossing}", "model_id": "two/1"}
    for key, value in change.items():
        if isinstance(value, str):
            value = value.format(videos=env.videos, outside=bad_files["secret"])
        body[key] = value
    r = client.post("/streams", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["message"], r.text
    assert client.post("/two/1", content=png_bytes(crossing_frames(4)[0])).status_code == 200


def test_too_many_streams_is_429_and_delete_stops_them(client, env):
    running = [
        start(client, source=f"file://{env.long}", model_id="two/1", realtime=True)["id"]
        for _ in range(3)
    ]
    r = client.post("/streams", json={"source": f"file://{env.long}", "model_id": "two/1"})
    assert r.status_code == 429 and "--max-streams" in r.json()["message"]
    for stream_id in running:
        r = client.delete(f"/streams/{stream_id}")
        assert r.status_code == 200 and r.json()["status"] == "stopped"
    listed = {o["id"]: o["status"] for o in client.get("/streams").json()["items"]}
    assert all(listed[i] == "stopped" for i in running)
    assert client.delete("/streams/s_nope").status_code == 404
    start(client, source=f"file://{env.crossing}", model_id="two/1")  # room again


def test_keys_missing_401_wrong_403(env):
    with env.server(api_keys=("k1",)) as server, httpx.Client(base_url=server.url) as c:
        body = {"source": f"file://{env.crossing}", "model_id": "two/1"}
        message = {"Message": "User is not authorized to access this resource"}
        r = c.post("/streams", json=body)
        assert (r.status_code, r.json()) == (401, message)
        r = c.post("/streams", json={"not": "a stream"})  # the key is checked first
        assert (r.status_code, r.json()) == (401, message)
        r = c.get("/streams", params={"api_key": "nope"})
        assert (r.status_code, r.json()) == (403, message)
        r = c.post("/streams", json=body, headers={"Authorization": "Bearer k1"})
        assert r.status_code == 201
        assert (
            c.get(f"/streams/{r.json()['id']}/events", params={"api_key": "x"}).status_code == 403
        )


def test_without_the_extra_post_says_what_to_install(env, monkeypatch):
    from cvserve.streams import manager

    monkeypatch.setattr(manager, "missing_packages", lambda request=None: ["av"])
    with env.server() as server, httpx.Client(base_url=server.url) as c:
        r = c.post("/streams", json={"source": f"file://{env.crossing}", "model_id": "two/1"})
        assert r.status_code == 501 and "cvserve[streams]" in r.json()["message"]


def test_a_restarted_server_resumes_a_running_stream(tmp_path, env):
    models = tmp_path / "models"
    store = ModelStore(models)
    import_model(two_colour_finder(tmp_path / "two.onnx", ("red", "green")), "two/1", store)
    settings = {**env.settings, "stream_dirs": (str(env.videos),)}
    with LiveServer(models, **settings) as server, httpx.Client(base_url=server.url) as c:
        obj = start(c, source=f"file://{env.long}", model_id="two/1", realtime=True)
        wait_for(
            lambda: c.get(f"/streams/{obj['id']}").json(), lambda o: o["status"] == "running", 10
        )
    with LiveServer(models, **settings) as server, httpx.Client(base_url=server.url) as c:
        again = c.get(f"/streams/{obj['id']}").json()
        assert again["status"] in ("starting", "running"), again
        final = finished(c, obj["id"])
        assert final["status"] == "completed" and final["stats"]["frames_inferred"] > 0


def test_openapi_documents_the_streams_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/streams", "/streams/{stream_id}", "/streams/{stream_id}/events",
                 "/streams/{stream_id}/frame.jpg", "/streams/{stream_id}/mjpeg"):  # fmt: skip
        assert path in paths, path
    post = paths["/streams"]["post"]
    assert "201" in post["responses"] and "429" in post["responses"]
    assert (
        "text/event-stream"
        in paths["/streams/{stream_id}/events"]["get"]["responses"]["200"]["content"]
    )


# -- the SDK and the SSE wire format --------------------------------------------------------


def test_sdk_starts_follows_and_stops_a_stream(client, env):
    import cvserve

    with cvserve.Client(str(client.base_url)) as sdk:
        stream = sdk.streams.start(
            f"file://{env.crossing}", "two/1", tracker="bytetrack", params={"confidence": 50},
            zones=[{"name": "right", "polygon": RIGHT_HALF}],
        )  # fmt: skip
        events = list(stream.events(from_frame=0))
        frames = [e for e in events if e.event == "frame"]
        assert [int(e.id) for e in frames] == list(range(40))
        assert events[-1].event == "status" and stream.status == "completed"
        assert frames[-1].data["predictions"][0]["tracker_id"] is not None
        assert stream.frame_jpeg()[:2] == b"\xff\xd8"
        assert stream.id in {s.id for s in sdk.streams.list()}
        assert sdk.streams.get(stream.id).info["counts"]["zones"] == {"right": {"red": 1}}
        assert stream.stop()["status"] == "stopped"
        with pytest.raises(cvserve.CVServeHTTPError) as err:
            sdk.streams.start("ftp://x/a.mp4", "two/1")
        assert err.value.status == 400 and "scheme" in err.value.message


def test_sse_encoder_and_parser_round_trip():
    from cvserve.wire import sse

    events = [("frame", '{"frame": 3, "a": [1, 2]}', 3), ("status", '{"status": "running"}', None)]
    text = b"".join(sse.encode(k, d, i) for k, d, i in events) + sse.KEEPALIVE
    parsed = list(sse.parse(text.decode().split("\n")))
    assert [(e.event, e.id, e.data) for e in parsed] == [
        ("frame", "3", {"frame": 3, "a": [1, 2]}),
        ("status", None, {"status": "running"}),
    ]
    with pytest.raises(ValueError):
        sse.encode("frame", "two\nlines")


def test_cli_predict_video_writes_annotated_video_jsonl_and_mot(env, tmp_path):
    import subprocess
    import sys

    import av

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cvserve.cli", "predict", str(env.crossing), "--model", "two/1",
           "--track", "--out", str(out), "--models-dir", str(env.models), "-c", "50"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CVSERVE_AUTO_PULL": "false"})  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    import json

    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(40))
    red = {p["tracker_id"] for x in lines[1:] for p in x["predictions"] if p["class"] == "red"}
    assert len(red) == 1 and None not in red
    rows = [r.split(",") for r in (out / "mot.txt").read_text().splitlines()]
    assert len(rows) == 2 * 39 and {r[0] for r in rows} == {str(i) for i in range(2, 41)}
    with av.open(str(out / "annotated.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 40
    bad = subprocess.run(cmd[:5] + ["--model", "cls/1", "--track", "--out", str(out),
                                    "--models-dir", str(env.models)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CVSERVE_AUTO_PULL": "false"})  # fmt: skip
    assert bad.returncode == 2 and "needs a detector" in bad.stdout + bad.stderr


@pytest.mark.parametrize("kind", ["seg", "pose"])
def test_segmentation_and_keypoint_models_track_too(client, env, kind, tmp_path):
    from tests.support.synthetic_store import _pose_model, _seg_model

    model_id = f"{kind}-track/1"
    if not (env.models / model_id).exists():
        build = _seg_model if kind == "seg" else _pose_model
        import_model(build(tmp_path / f"{kind}.onnx"), model_id, ModelStore(env.models))
    obj = start(client, source=f"file://{env.crossing}", model_id=model_id, tracker="sort")
    frames = frames_of(client, obj["id"])
    assert len(frames) == 40
    field = "points" if kind == "seg" else "keypoints"
    assert all(field in p for f in frames for p in f["predictions"])
    ids = {p["tracker_id"] for f in frames[1:] for p in f["predictions"]}
    assert len(ids) == 1 and None not in ids  # one still object, one identity


def test_live_listeners_each_get_the_frames_then_the_final_status(client, env):
    from concurrent.futures import ThreadPoolExecutor

    obj = start(client, source=f"file://{env.crossing}", model_id="two/1", realtime=True)

    def listen() -> list[tuple[str, str | None, dict]]:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            return list(sse_events(c, f"/streams/{obj['id']}/events"))

    with ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(listen) for _ in range(2)]]
    for events in results:
        assert events[0][0] == "status"  # where the stream stands when the listener comes
        frames = [int(e[1]) for e in events if e[0] == "frame"]
        assert frames and frames == sorted(frames) and frames[-1] == 39
        assert events[-1][0] == "status" and events[-1][2]["status"] == "completed"


def test_a_file_cut_short_ends_with_what_it_had(client, env, tmp_path):
    mkv = write_clip(tmp_path / "whole.mkv", crossing_frames(40))
    data = mkv.read_bytes()
    cut = env.videos / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 3])
    obj = start(client, source=f"file://{cut}", model_id="two/1")
    final = finished(client, obj["id"])
    stats = final["stats"]
    assert final["status"] in ("completed", "failed"), final
    assert 0 < stats["frames_read"] < 40
    assert stats["frames_read"] == stats["frames_inferred"] + stats["frames_dropped"]
    assert client.post("/two/1", content=png_bytes(crossing_frames(4)[0])).status_code == 200


def test_a_server_that_runs_no_streams_says_why(env):
    """As a Ray deployment without stream workers: 501 with the reason."""
    from cvserve.streams.manager import NO_STREAM_WORKERS

    server = env.server()
    server.server.config.app.state.cvserve.streams.unavailable = NO_STREAM_WORKERS
    with server, httpx.Client(base_url=server.url) as c:
        r = c.post("/streams", json={"source": f"file://{env.crossing}", "model_id": "two/1"})
        assert r.status_code == 501 and "cvserve serve" in r.json()["message"]
