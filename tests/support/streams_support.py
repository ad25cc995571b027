"""Helpers for the video stream tests: clips made at run time, a two-object detector, a real
RTSP server in a subprocess, and a small SSE reader."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.support.synthetic import _save

SYSTEM_PYTHON = "/usr/bin/python3"
HERE = Path(__file__).parent

# -- clips ---------------------------------------------------------------------------------


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 15, codec: str = "h264") -> Path:
    """Encode RGB frames into a video file (container from the suffix) with PyAV."""
    import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "h264":
            stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(fps)}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def square(img: np.ndarray, cx: int, cy: int, half: int, channel: int) -> None:
    """Paint a square of full intensity in one colour channel (even edges: 4:2:0 chroma)."""
    x0, y0 = (cx - half) // 2 * 2, (cy - half) // 2 * 2
    img[y0 : y0 + 2 * half, x0 : x0 + 2 * half, channel] = 255


def crossing_frames(n: int = 40, width: int = 640, height: int = 480) -> list[np.ndarray]:
    """A red square moving right across the middle and a green one moving left, their
    paths overlapping there (red higher and smaller, green lower and larger). At 640x480
    the red one's centre goes 80 -> 560 at y 220, the green one's 560 -> 80 at y 260."""
    sx, sy = width / 640, height / 480
    frames = []
    for i in range(n):
        img = np.zeros((height, width, 3), np.uint8)
        t = i / (n - 1)
        square(img, int((80 + t * 480) * sx), int(220 * sy), int(40 * sx), channel=0)
        square(img, int((560 - t * 480) * sx), int(260 * sy), int(50 * sx), channel=1)
        frames.append(img)
    return frames


def hls_clip(folder: Path) -> Path:
    """An HLS playlist and its segments, written by PyAV (FFmpeg's hls muxer)."""
    import av

    folder.mkdir()
    options = {"hls_time": "1", "hls_list_size": "0", "hls_playlist_type": "vod"}
    with av.open(str(folder / "index.m3u8"), "w", format="hls", options=options) as out:
        stream = out.add_stream("h264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for rgb in crossing_frames(30, 320, 240):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return folder / "index.m3u8"


# -- a detector of two coloured objects ----------------------------------------------------


def two_colour_finder(path: Path, names: tuple[str, str], score: float = 0.9) -> Path:
    """A real YOLO-v8-shaped detector: candidate c is the bright region of channel c
    (c = 0 red, 1 green), with class c at `score`. Output [1, 4 + 2, 2] in input pixels."""
    f = TensorProto.FLOAT
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        numpy_helper.from_array(np.array([2.0], np.float32), "two"),
        numpy_helper.from_array(np.array([score, 0.0, 0.0, score], np.float32), "scores"),
        numpy_helper.from_array(np.array([1, 6, 2], np.int64), "out_shape"),
    ]
    nodes = []
    parts: dict[str, list[str]] = {"cx": [], "cy": [], "dx": [], "dy": []}
    for c in (0, 1):
        inits += [
            numpy_helper.from_array(np.array([c], np.int64), f"c{c}a"),
            numpy_helper.from_array(np.array([c + 1], np.int64), f"c{c}b"),
        ]
        p = f"k{c}_"
        nodes += [
            helper.make_node("Slice", ["images", f"c{c}a", f"c{c}b", "axis1"], [p + "ch"]),
            helper.make_node("Greater", [p + "ch", "half"], [p + "bright"]),
            helper.make_node("Cast", [p + "bright"], [p + "m"], to=f),
            helper.make_node("ReduceMax", [p + "m"], [p + "col"], axes=[0, 1, 2], keepdims=0),
            helper.make_node("ReduceMax", [p + "m"], [p + "row"], axes=[0, 1, 3], keepdims=0),
        ]
        for axis, profile in (("x", "col"), ("y", "row")):
            q = p + axis
            nodes += [
                helper.make_node("ArgMax", [p + profile], [q + "1i"], axis=0, keepdims=1),
                helper.make_node(
                    "ArgMax", [p + profile], [q + "2i"], axis=0, keepdims=1, select_last_index=1
                ),
                helper.make_node("Cast", [q + "1i"], [q + "1"], to=f),
                helper.make_node("Cast", [q + "2i"], [q + "2l"], to=f),
                helper.make_node("Add", [q + "2l", "one"], [q + "2"]),
                helper.make_node("Add", [q + "1", q + "2"], [q + "s"]),
                helper.make_node("Div", [q + "s", "two"], [q + "c"]),
                helper.make_node("Sub", [q + "2", q + "1"], [q + "d"]),
            ]
            parts[f"c{axis}"].append(q + "c")
            parts[f"d{axis}"].append(q + "d")
    order = parts["cx"] + parts["cy"] + parts["dx"] + parts["dy"] + ["scores"]
    nodes += [
        helper.make_node("Concat", order, ["flat"], axis=0),
        helper.make_node("Reshape", ["flat", "out_shape"], ["output0"]),
    ]
    from tests.support.synthetic import ultralytics_meta

    return _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("images", f, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", f, [1, 6, 2])],
        path,
        ultralytics_meta("detect", list(names)),
    )


# -- a real RTSP server ----------------------------------------------------------------------


def rtsp_available() -> str | None:
    """Why the RTSP server cannot run here, or None."""
    if not Path(SYSTEM_PYTHON).exists():
        return "no /usr/bin/python3"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst; Gst.init(None);"
        "assert all(Gst.ElementFactory.find(e) for e in ('qtdemux', 'h264parse', 'rtph264pay'))"
    )
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    if done.returncode != 0:
        return "gst-rtsp-server via PyGObject is missing (apt: gstreamer1.0-rtsp, " + (
            "gir1.2-gst-rtsp-server-1.0, python3-gi, gstreamer1.0-plugins-good/-bad)"
        )
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    """tests/support/rtsp_server.py in a subprocess: rtsp://127.0.0.1:PORT/clip, stoppable and
    restartable on the same port."""

    def __init__(self, clip: Path) -> None:
        self.clip = clip
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/clip"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> RtspServer:
        cmd = [SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), str(self.port), str(self.clip)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


# -- HTTP helpers ------------------------------------------------------------------------------


def wait_for(
    fetch: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj = fetch()
    while not done(obj):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting; last: {obj}")
        time.sleep(0.1)
        obj = fetch()
    return obj


def sse_events(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None, timeout: float = 30
) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
    """(event, id, data) of a Server-Sent Events response until the server ends it."""
    from cvserve.wire import sse

    with client.stream("GET", url, headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for event in sse.parse(resp.iter_lines()):
            yield event.event, event.id, event.data


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
