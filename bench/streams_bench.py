"""Video streams (issue 19, "Measured"): a real `cvserve serve` running streams on a
1280x720 H.264 clip, beside the bare model and the peer's InferencePipeline, in one run.

    python bench/streams_bench.py            # ~4 min on 2 cores
    python bench/streams_bench.py --quick    # ~1.5 min: short clips and windows (a dry run)
    python bench/streams_bench.py --no-peer  # without the peer (its venv: bench/README.md)

The clip is made once from the bench's real photos (`bench/models.py`: Ultralytics' zidane
and bus photos), a 1280x720 window panning and zooming across them, encoded by PyAV's libx264
(30 fps; a 10 fps one for the four live streams), cached under .cache/streams-bench/.

- **bare**: the best exact runtime's sessions on the same ONNX, fed a frame of the clip
  letterboxed to 640 by cvserve's own preprocessing: the better of one session on every
  core and one single-threaded session per core side by side (`run.Bare`); measured before
  and after the server's parts, each part's ratio against the mean of the two.
- **1. one file stream as fast as it goes** (POST /streams, tracker bytetrack): frames/s
  between the first and last SSE frame event, and over the whole stream (POST to
  `completed`), as a ratio to the bare throughput. Goal >= 0.85x.
- **2. one live stream at 30 fps** (`realtime: true`: the file read at its native rate, only
  the newest frame kept): frame-to-event latency from the stream's stats (decode to result)
  and from the SSE events (their `time`, the frame's decode wall time, to receipt), p50 and
  p95, against bare's per-frame p50. Goal: p50 within 25 ms of bare.
- **3. four live streams at 10 fps**: started one by one, server RSS with 0..4 streams
  running; then each stream's fps_out, drops and latency over a window. Goals: no stream
  starves, memory per extra stream <= 60 MB.
- **4. the peer**: `inference`'s InferencePipeline on the same clip, its on_video_frame
  running the same ONNX (bench/streams_peer.py, in .cache/peer-venv).

Prints a table and writes bench/results/streams-<date>.json (every number).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CACHE,
    MODELS_DIR,
    RESULTS_DIR,
    cores,
    cpu_seconds,
    median,
    percentile,
    report_head,
)
from run import (  # noqa: E402
    PEER_VENV,
    Bare,
    _goal,
    external,
    model_id,
    prepare_store,
    server,
)

CLIPS = CACHE / "streams-bench"
SIZE = (1280, 720)
MODEL = "yolov8n"
TRACKER = "bytetrack"


# -- the clip -----------------------------------------------------------------------------------


def _views(photo: np.ndarray, n: int, pan: tuple[float, float], zoom: tuple[float, float]):
    """n 1280x720 views of a photo: a 16:9 window zooming from zoom[0] to zoom[1] (its width
    over the photo's largest 16:9 window) while its centre pans by pan (fractions of the
    room left, x and y), resized to 1280x720 as a camera's scaler would."""
    import cv2

    h, w = photo.shape[:2]
    full_w = min(w, h * 16 // 9)
    for i in range(n):
        t = i / max(1, n - 1)
        cw = int(full_w / (zoom[0] + (zoom[1] - zoom[0]) * t)) // 2 * 2
        ch = cw * 9 // 16 // 2 * 2
        x = int((w - cw) * (0.5 + pan[0] * (t - 0.5)))
        y = int((h - ch) * (0.5 + pan[1] * (t - 0.5)))
        crop = photo[y : y + ch, x : x + cw]
        interp = cv2.INTER_AREA if cw > SIZE[0] else cv2.INTER_LINEAR
        yield cv2.resize(crop, SIZE, interpolation=interp)


def make_clip(frames: int, fps: int) -> Path:
    """The clip (cached): half of it over the 1920x1080 zidane photo (pan right, zoom in),
    half over the 1280x960 bus photo (pan down, zoom in), H.264 by libx264 (preset fast,
    crf 23, a keyframe every 2 s, B-frames: what a recording or camera file looks like)."""
    path = CLIPS / f"clip-{SIZE[0]}x{SIZE[1]}-{fps}fps-{frames}.mp4"
    if path.is_file():
        return path
    import av
    import cv2

    index = json.loads((MODELS_DIR / "index.json").read_text())
    photos = [
        cv2.cvtColor(cv2.imread(str(MODELS_DIR / index["photos"][k])), cv2.COLOR_BGR2RGB)
        for k in ("1920x1080", "1280x960")
    ]
    first = frames // 2
    CLIPS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "fast", "crf": "23", "g": str(2 * fps)}
        views = [
            *_views(photos[0], first, pan=(0.8, 0.3), zoom=(1.0, 1.4)),
            *_views(photos[1], frames - first, pan=(0.2, 0.9), zoom=(1.0, 1.3)),
        ]
        for rgb in views:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


def first_frame(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    raise RuntimeError(f"{path} has no frames")


# -- the server's side ------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """A process and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (the server, should it fork)."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def rss_over(pid: int, seconds: float, every: float = 0.5) -> dict[str, float]:
    """RSS sampled for `seconds`: median and max, MiB."""
    samples = []
    end = time.monotonic() + seconds
    while True:
        samples.append(tree_rss(pid) / 2**20)
        if time.monotonic() >= end:
            break
        time.sleep(every)
    return {"median_mb": median(samples), "max_mb": max(samples), "n": len(samples)}


class Events:
    """An SSE listener on its own thread: (receipt wall time, event kind, data, bytes)."""

    def __init__(self, base: str, stream_id: str) -> None:
        self.url = f"{base}/streams/{stream_id}/events?from=0"
        self.items: list[tuple[float, str, dict]] = []
        self.bytes = 0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        from cvserve.wire import sse

        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(10, read=60)) as resp:

                def lines():
                    for line in resp.iter_lines():
                        self.bytes += len(line) + 1
                        yield line

                for event in sse.parse(lines()):
                    self.items.append((time.time(), event.event, event.data))
        except Exception as exc:  # reported, not raised: the numbers say what is missing
            self.error = f"{type(exc).__name__}: {exc}"

    def frames(self) -> list[tuple[float, dict]]:
        return [(t, d) for t, kind, d in self.items if kind == "frame"]

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


def start_stream(client: httpx.Client, source: Path, **extra: object) -> dict:
    body = {"source": f"file://{source}", "model_id": model_id(MODEL), "tracker": TRACKER}
    r = client.post("/streams", json=body | extra)
    if r.status_code != 201:
        raise RuntimeError(f"POST /streams: {r.status_code} {r.text}")
    return r.json()


def wait_final(client: httpx.Client, stream_id: str, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while True:
        obj = client.get(f"/streams/{stream_id}").json()
        if obj["status"] in ("completed", "failed", "stopped") or time.monotonic() > end:
            return obj
        time.sleep(0.25)


def outcome(final: dict) -> dict:
    """How a stream ended and its frame counts, from its final status."""
    stats = final["stats"]
    return {
        "status": final["status"],
        "error": final["error"],
        **{k: stats[k] for k in ("frames_read", "frames_inferred", "frames_dropped")},
    }


def sse_latency(frames: list[tuple[float, dict]]) -> dict[str, float]:
    """Frame decode (the event's `time`) to the event's receipt, ms."""
    lat = [(t - d["time"]) * 1e3 for t, d in frames]
    return {"p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "n": len(lat)}


def file_stream(client: httpx.Client, base: str, pid: int, clip: Path, timeout: float) -> dict:
    """Part 1: one file stream, as fast as it goes, to its end."""
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    obj = start_stream(client, clip)
    events = Events(base, obj["id"])
    final = wait_final(client, obj["id"], timeout)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    events.join(10)
    frames = events.frames()
    stats = final["stats"]
    steady = float("nan")
    if len(frames) > 10:
        steady = (len(frames) - 1) / (frames[-1][0] - frames[0][0])
    return {
        **outcome(final),
        "sse_frames": len(frames),
        "sse_error": events.error,
        "wall_s": wall,
        "fps_whole": stats["frames_inferred"] / wall,  # POST to completed: open, probe, all
        "fps_steady": steady,  # first to last SSE frame event
        "server_cpu_ms_per_frame": cpu / max(1, stats["frames_inferred"]) * 1e3,
        "predictions_per_frame": median([len(d.get("predictions", [])) for _, d in frames]),
        "event_bytes_mean": events.bytes / max(1, len(events.items)),
    }


def live_stream(client: httpx.Client, base: str, pid: int, clip: Path, timeout: float) -> dict:
    """Part 2: one live stream (the file at its native rate, newest frame only)."""
    cpu0 = cpu_seconds(pid)
    obj = start_stream(client, clip, realtime=True)
    events = Events(base, obj["id"])
    final = wait_final(client, obj["id"], timeout)
    cpu = cpu_seconds(pid) - cpu0
    events.join(10)
    frames = events.frames()
    stats = final["stats"]
    span = frames[-1][0] - frames[0][0] if len(frames) > 1 else float("nan")
    return {
        **outcome(final),
        "fps_out": (len(frames) - 1) / span if frames else float("nan"),
        "stats_latency_ms": stats["latency_ms"],  # the server's: decode to result
        "sse_latency": sse_latency(frames),  # decode to the event's receipt here
        "sse_error": events.error,
        "server_cpu_ms_per_frame": cpu / max(1, stats["frames_inferred"]) * 1e3,
    }


def many_streams(
    client: httpx.Client, pid: int, clip: Path, n: int, stage_s: float, window_s: float
) -> dict:
    """Part 3: n live streams, started one by one (RSS with 0..n running), then measured
    together for window_s; stopped at the end (RSS after).

    Before the baseline, n streams run for stage_s and are stopped: the model's every lane
    (a lane's session arena grows on its first run, once) and the streams' one-time costs
    are paid, so the steps between counts are what a stream itself holds."""
    rss_cold = rss_over(pid, 1.0)
    warm_ids = [start_stream(client, clip, realtime=True)["id"] for _ in range(n)]
    time.sleep(stage_s)
    for i in warm_ids:
        client.delete(f"/streams/{i}")
    time.sleep(1.0)
    rss = [rss_over(pid, stage_s)]
    ids: list[str] = []
    for _ in range(n):
        ids.append(start_stream(client, clip, realtime=True)["id"])
        time.sleep(1.0)  # running, its first frames through
        rss.append(rss_over(pid, stage_s))
    before = {i: client.get(f"/streams/{i}").json() for i in ids}
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    mid = []
    while time.monotonic() - t0 < window_s:  # starving: a stream with no frame in a 2 s step
        time.sleep(2.0)
        mid.append({i: client.get(f"/streams/{i}").json()["stats"]["frames_inferred"] for i in ids})
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    after = {i: client.get(f"/streams/{i}").json() for i in ids}
    rss_during = rss_over(pid, 2.0)
    per_stream = []
    for i in ids:
        b, a = before[i]["stats"], after[i]["stats"]
        read = a["frames_read"] - b["frames_read"]
        inferred = a["frames_inferred"] - b["frames_inferred"]
        steps = [s[i] for s in mid]
        gaps = [y - x for x, y in zip([b["frames_inferred"], *steps[:-1]], steps, strict=True)]
        per_stream.append({
            "status": after[i]["status"],
            "fps_in": read / elapsed,
            "fps_out": inferred / elapsed,
            "dropped": a["frames_dropped"] - b["frames_dropped"],
            "dropped_share": (a["frames_dropped"] - b["frames_dropped"]) / max(1, read),
            "latency_ms": a["latency_ms"],
            "fewest_in_2s": min(gaps) if gaps else None,
        })  # fmt: skip
    for i in ids:
        client.delete(f"/streams/{i}")
    time.sleep(2.0)
    rss_stopped = rss_over(pid, stage_s)
    fps = [s["fps_out"] for s in per_stream]
    mb = [r["median_mb"] for r in rss]
    total_out = sum(fps)
    return {
        "streams": per_stream,
        "window_s": elapsed,
        "fps_out_total": total_out,
        "fps_out_min_over_max": min(fps) / max(fps) if max(fps) > 0 else 0.0,
        "starved": [s for s in per_stream if not s["fewest_in_2s"]],
        "server_cpu_ms_per_frame": cpu / max(1e-9, total_out * elapsed) * 1e3,
        "rss_mb_before_warmup": rss_cold["median_mb"],
        "rss_mb_by_streams": mb,
        "rss_mb_all_running_end": rss_during["median_mb"],
        "rss_mb_after_stop": rss_stopped["median_mb"],
        "mb_first_stream": mb[1] - mb[0],
        "mb_per_extra_stream": (mb[n] - mb[1]) / max(1, n - 1),
        "mb_per_stream_from_none": (mb[n] - mb[0]) / n,
    }


# -- orchestration ----------------------------------------------------------------------------


def warm(client: httpx.Client, clip: Path) -> None:
    """The model loaded and the streams path imported (PyAV, trackers) before measuring."""
    obj = start_stream(client, clip)
    wait_final(client, obj["id"], 120)


def run(args: argparse.Namespace) -> dict:
    n_cores = cores()
    clip = make_clip(args.frames, 30)
    live_n = math.ceil((args.streams * (args.stage + 1) + args.window + 8) * args.live_fps)
    clip10 = make_clip(live_n, args.live_fps)
    warm_clip = make_clip(20, 30)
    tmp = Path(tempfile.mkdtemp(prefix="cvserve-streams-bench-"))
    store_dir = tmp / "store"
    prepare_store(store_dir, [MODEL])
    from cvserve.engine import LocalEngine
    from cvserve.settings import Settings

    settings = Settings(models_dir=store_dir, runtime="auto")
    store = LocalEngine.from_settings(settings).store
    model = store.get(model_id(MODEL))
    frame = first_frame(clip)
    tensor, _ = model.preprocess(frame)  # the frame letterboxed to 640 as cvserve does it
    bare = Bare(MODELS_DIR / f"{MODEL}.onnx", n_cores)
    report: dict = {
        **report_head(n_cores),
        "clip": {
            "file": clip.name,
            "frames": args.frames,
            "fps": 30,
            "size": list(SIZE),
            "bytes": clip.stat().st_size,
            "live_clip": clip10.name,
        },  # fmt: skip
        "model": MODEL,
        "tensor_shape": list(tensor.shape),
        "tracker": TRACKER,
        "bare": [],
    }

    def bare_now() -> dict:
        rec = bare.measure(tensor, args.n, args.duration)
        report["bare"].append(rec)
        print(f"bare: {rec['tput']:.1f} frames/s, p50 {rec['p50_ms']:.1f} ms", file=sys.stderr)
        return rec

    env = {
        "CVSERVE_LOG_LEVEL": "warning",
        "CVSERVE_RUNTIME": "auto",
        "CVSERVE_DATA_DIR": str(tmp / "data"),
        "CVSERVE_STREAM_DIRS": str(CLIPS),
        "CVSERVE_MAX_STREAMS": str(max(8, args.streams)),
    }
    parts: dict[str, dict] = {}
    forked: list[int] = []
    try:
        b0 = bare_now()
        with server(store_dir, None, env) as (port, pid):
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=60) as client:
                report["rss_mb_server_started"] = rss_over(pid, 1.0)["median_mb"]
                warm(client, warm_clip)
                report["rss_mb_after_first_stream"] = rss_over(pid, 1.0)["median_mb"]
                parts["file"] = file_stream(client, base, pid, clip, timeout=600)
                print(f"file stream: {parts['file']['fps_steady']:.1f} frames/s", file=sys.stderr)
                b1 = bare_now()
                parts["live"] = live_stream(client, base, pid, clip, timeout=args.frames / 30 + 60)
                print(f"live stream: {parts['live']['sse_latency']}", file=sys.stderr)
                parts["many"] = many_streams(
                    client, pid, clip10, args.streams, args.stage, args.window
                )
                print(f"{args.streams} streams: {parts['many']['fps_out_total']:.1f} frames/s",
                      file=sys.stderr)  # fmt: skip
                forked = [p for p in tree(pid) if p != pid]
        # Any child the server leaves (once OpenVINO's telemetry sender, now declined):
        # reported, then ended.
        time.sleep(1.0)
        report["server_children_left"] = []
        for child in forked:
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                report["server_children_left"].append(cmd.decode(errors="replace")[:200])
                os.kill(child, signal.SIGKILL)
        b2 = bare_now()
    finally:
        store.close()
    if not args.no_peer:
        peer_args = [str(MODELS_DIR / f"{MODEL}.onnx"), str(clip), "--threads", str(n_cores)]
        parts["peer"] = external(PEER_VENV, "streams_peer.py", peer_args, timeout=600)
        print(f"peer: {parts['peer']}", file=sys.stderr)
    report["parts"] = parts
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
    report["summary"] = summary(report, (b0, b1), (b1, b2))
    return report


def _mean(recs: tuple[dict, ...], key: str) -> float:
    return sum(r[key] for r in recs) / len(recs)


def summary(report: dict, around_file: tuple[dict, ...], around_live: tuple[dict, ...]) -> dict:
    parts = report["parts"]
    f, live, many = parts["file"], parts["live"], parts["many"]
    bare_tput = _mean(around_file, "tput")
    bare_p50 = _mean(around_live, "p50_ms")
    out = {
        "bare_tput": bare_tput,
        "bare_p50_ms": bare_p50,
        "bare_cpu_ms": _mean(around_file, "cpu_ms"),
        "file_fps_over_bare": f["fps_steady"] / bare_tput,
        "file_fps_whole_over_bare": f["fps_whole"] / bare_tput,
        # CPU per frame: what an idle machine would give (bare's CPU over the stream's).
        "file_cpu_ratio": _mean(around_file, "cpu_ms") / f["server_cpu_ms_per_frame"],
        "live_sse_p50_minus_bare_ms": live["sse_latency"]["p50_ms"] - bare_p50,
        "live_stats_p50_minus_bare_ms": (live["stats_latency_ms"]["p50"] or math.nan) - bare_p50,
    }
    peer = parts.get("peer", {})
    if "fps" in peer:
        out["peer_fps_over_bare"] = peer["fps"] / bare_tput
        out["file_fps_over_peer"] = f["fps_steady"] / peer["fps"]
    goals = [
        _goal("file stream fps / bare", "1 file stream", out["file_fps_over_bare"], ">=", 0.85,
              "x"),
        _goal("live 30 fps: SSE p50 - bare p50", "1 live stream",
              out["live_sse_p50_minus_bare_ms"], "<=", 25.0, "ms"),
        _goal("live 30 fps: stats p50 - bare p50", "1 live stream",
              out["live_stats_p50_minus_bare_ms"], "<=", 25.0, "ms"),
        _goal("no stream starves (streams with a 2 s step without a frame)",
              f"{len(many['streams'])} live streams", float(len(many["starved"])), "<=", 0, ""),
        _goal("memory per extra stream", f"{len(many['streams'])} live streams",
              many["mb_per_extra_stream"] * 2**20 / 1e6, "<=", 60.0, "MB"),
    ]  # fmt: skip
    out["goals"] = goals
    return out


def table(report: dict) -> str:
    s, parts = report["summary"], report["parts"]
    f, live, many = parts["file"], parts["live"], parts["many"]
    bare = report["bare"]
    lines = [
        f"{report['date']}, {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"load {report['machine']['loadavg_at_start'][0]:.1f} -> "
        f"{report['machine']['loadavg_at_end'][0]:.1f}",
        f"clip {report['clip']['file']} ({report['clip']['bytes'] / 1e6:.1f} MB), model "
        f"{report['model']} input {report['tensor_shape']}, tracker {report['tracker']}",
        "",
        "| what | figure | vs bare | goal |",
        "|---|---|---|---|",
        "| bare (before / between / after) | "
        + " / ".join(f"{b['tput']:.1f} fps, p50 {b['p50_ms']:.1f} ms" for b in bare)
        + f" ({bare[0]['runtime']}) | - | - |",
        f"| 1. file stream, as fast as it goes | {f['fps_steady']:.1f} fps steady, "
        f"{f['fps_whole']:.1f} whole ({f['frames_inferred']}/{f['frames_read']} frames, "
        f"{f['frames_dropped']} dropped, {f['predictions_per_frame']:.0f} boxes/frame), "
        f"CPU {f['server_cpu_ms_per_frame']:.1f} ms/frame (bare {s['bare_cpu_ms']:.1f}) | "
        f"x{s['file_fps_over_bare']:.2f} (whole x{s['file_fps_whole_over_bare']:.2f}; by CPU "
        f"x{s['file_cpu_ratio']:.2f}) | >= 0.85x {_ok(s['file_fps_over_bare'] >= 0.85)} |",
        f"| 2. live stream, 30 fps | latency p50/p95: stats "
        f"{live['stats_latency_ms']['p50']} / {live['stats_latency_ms']['p95']} ms, SSE "
        f"{live['sse_latency']['p50_ms']:.1f} / {live['sse_latency']['p95_ms']:.1f} ms; "
        f"{live['fps_out']:.1f} fps out, {live['frames_dropped']}/{live['frames_read']} "
        f"dropped | SSE p50 +{s['live_sse_p50_minus_bare_ms']:.1f} ms (stats "
        f"+{s['live_stats_p50_minus_bare_ms']:.1f}) over bare p50 {s['bare_p50_ms']:.1f} | "
        f"<= +25 ms {_ok(s['live_sse_p50_minus_bare_ms'] <= 25)} |",
    ]
    for k, st in enumerate(many["streams"]):
        lines.append(
            f"| 3. live stream {k + 1} of {len(many['streams'])}, 10 fps | "
            f"{st['fps_out']:.1f} fps out of {st['fps_in']:.1f} in, {st['dropped']} dropped "
            f"({st['dropped_share']:.0%}), latency p50/p95 {st['latency_ms']['p50']} / "
            f"{st['latency_ms']['p95']} ms, fewest frames in a 2 s step "
            f"{st['fewest_in_2s']} | - | no starving {_ok(bool(st['fewest_in_2s']))} |"
        )
    rss = " / ".join(f"{v:.0f}" for v in many["rss_mb_by_streams"])
    lines.append(
        f"| 3. server RSS, 0..{len(many['streams'])} streams | started "
        f"{report['rss_mb_server_started']:.0f}, after a first stream "
        f"{report['rss_mb_after_first_stream']:.0f}, before the warm-up streams "
        f"{many['rss_mb_before_warmup']:.0f}; then {rss} MiB (stopped: "
        f"{many['rss_mb_after_stop']:.0f}); first stream +{many['mb_first_stream']:.1f}, each "
        f"extra +{many['mb_per_extra_stream']:.1f} MiB "
        f"({many['mb_per_extra_stream'] * 2**20 / 1e6:.1f} MB) | - | <= 60 MB "
        f"{_ok(many['mb_per_extra_stream'] * 2**20 / 1e6 <= 60)} |"
    )
    lines.append(
        f"| 3. together | {many['fps_out_total']:.1f} fps out, min/max per stream "
        f"{many['fps_out_min_over_max']:.2f}, CPU {many['server_cpu_ms_per_frame']:.1f} "
        f"ms/frame | x{many['fps_out_total'] / s['bare_tput']:.2f} | - |"
    )
    peer = parts.get("peer")
    if peer is not None:
        if "fps" in peer:
            lines.append(
                f"| 4. peer InferencePipeline {peer.get('version', '')}, same clip and ONNX | "
                f"{peer['fps']:.1f} fps ({peer['frames']} frames, {peer.get('note', '')}) | "
                f"x{s['peer_fps_over_bare']:.2f}; cvserve x{s['file_fps_over_peer']:.2f} the "
                f"peer | - |"
            )
        else:
            lines.append(f"| 4. peer | not run: {peer.get('error', '')[:300]} | - | - |")
    left = report.get("server_children_left")
    if left:
        lines.append(f"\nleft behind by the stopped server (ended here): {left}")
    return "\n".join(lines)


def _ok(met: bool) -> str:
    return "met" if met else "MISS"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short clips and windows (a dry run)")
    p.add_argument("--frames", type=int, default=None, help="frames of the 30 fps clip (300)")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--live-fps", type=int, default=10, help="the live streams' clip rate")
    p.add_argument("--stage", type=float, default=None, help="s of RSS per stream count (5)")
    p.add_argument("--window", type=float, default=None, help="s the streams are measured (16)")
    p.add_argument("--duration", type=float, default=None, help="s per bare measurement (3)")
    p.add_argument("--n", type=int, default=20, help="minimum samples of bare latency")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the server stops (finally)
    args.frames = args.frames or (90 if args.quick else 300)
    args.stage = args.stage or (2.0 if args.quick else 5.0)
    args.window = args.window or (6.0 if args.quick else 16.0)
    args.duration = args.duration or (1.0 if args.quick else 3.0)
    if not (MODELS_DIR / "index.json").is_file():
        sys.exit(f"{MODELS_DIR} is empty: run `.cache/bench-venv/bin/python bench/models.py` first")
    report = run(args)
    report["table"] = table(report)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS_DIR / f"streams-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(report["table"])
    for g in report["summary"]["goals"]:
        print(f"- {'met' if g['met'] else 'MISS'}: {g['goal']} ({g['where']}): {g['measured']}, "
              f"target {g['target']}")  # fmt: skip
    print(f"\nreport: {out}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
