"""`cvserve predict VIDEO --model ID [--track] --out DIR`: a video file through a model, in
process, frame by frame (the same engine path the server answers with).

Writes under `out`: `predictions.jsonl` (one line per frame: `frame`, `pts` and the hosted
JSON, each prediction with `tracker_id` when tracking), `annotated.mp4` (H.264, the
prediction and tracker ids drawn) and, when tracking, `mot.txt` (MOTChallenge rows
`frame,id,x,y,w,h,conf,-1,-1,-1`, frames from 1). Needs the streams extra (PyAV).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from cvserve.predict.backends import LocalBackend
from cvserve.predict.options import PredictError, PredictOptions
from cvserve.results import Detections, Prediction
from cvserve.settings import Settings

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".ts")
JSONL = "predictions.jsonl"
VIDEO = "annotated.mp4"
MOT = "mot.txt"


@dataclass
class VideoSummary:
    frames: int
    out: Path
    files: list[str]


def is_video(source: str) -> bool:
    path = Path(source).expanduser()
    return path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()


def predict_video(
    opts: PredictOptions,
    tracker: str | None,
    settings: Settings | None = None,
    progress: Callable[[int], None] | None = None,
) -> VideoSummary:
    try:
        import av
    except ImportError:
        raise PredictError("videos need PyAV: pip install 'cvserve[streams]'") from None
    if opts.url:
        raise PredictError("videos run in-process; on a server, start a stream (POST /streams)")
    backend = LocalBackend(opts, lanes=1, settings=settings)
    try:
        if tracker and backend.task not in ("object-detection", "instance-segmentation",
                                            "keypoint-detection"):  # fmt: skip
            raise PredictError(f"--track needs a detector; {opts.model_id} is {backend.task}")
        return _run(av, backend, opts, tracker, progress)
    finally:
        backend.close()


def _run(
    av: Any,
    backend: LocalBackend,
    opts: PredictOptions,
    tracker_kind: str | None,
    progress: Callable[[int], None] | None,
) -> VideoSummary:
    from cvserve.render.annotate import annotate
    from cvserve.streams.tracking import Tracker

    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    source = Path(opts.source).expanduser()
    params = backend.params
    try:
        reader = av.open(str(source))
    except av.FFmpegError as exc:
        raise PredictError(f"cannot read {source}: {getattr(exc, 'strerror', exc)}") from None
    with ExitStack() as stack:
        stack.enter_context(reader)
        if not reader.streams.video:
            raise PredictError(f"{source} has no video stream")
        stream = reader.streams.video[0]
        rate = stream.average_rate or 25
        writer = stack.enter_context(av.open(str(out / VIDEO), "w"))
        jsonl = stack.enter_context(open(out / JSONL, "wb"))
        mot = stack.enter_context(open(out / MOT, "w")) if tracker_kind else None
        tracker = Tracker(tracker_kind, params.confidence, float(rate)) if tracker_kind else None
        encoder = None
        frames = 0
        for frame in reader.decode(stream):
            image = frame.to_ndarray(format="rgb24")
            body, prediction = _infer(backend, image, tracker, frames, mot)
            jsonl.write(orjson.dumps({"frame": frames, "pts": frame.time, **body}) + b"\n")
            drawn = annotate(image, prediction, stroke=2, labels=True,
                             confidence=params.confidence,
                             keypoint_confidence=params.keypoint_confidence)  # fmt: skip
            if encoder is None:  # H.264 4:2:0 wants even sides
                encoder = writer.add_stream("h264", rate=rate)
                encoder.width, encoder.height = image.shape[1] // 2 * 2, image.shape[0] // 2 * 2
                encoder.pix_fmt = "yuv420p"
            drawn = drawn[: encoder.height, : encoder.width]
            for packet in encoder.encode(av.VideoFrame.from_ndarray(drawn, format="rgb24")):
                writer.mux(packet)
            frames += 1
            if progress is not None:
                progress(frames)
        if encoder is not None:
            for packet in encoder.encode():
                writer.mux(packet)
    if frames == 0:
        raise PredictError(f"{source} has no decodable video frames")
    return VideoSummary(frames, out, [JSONL, VIDEO] + ([MOT] if tracker_kind else []))


def _infer(
    backend: LocalBackend, image: Any, tracker: Any, index: int, mot: IO[str] | None
) -> tuple[dict[str, Any], Prediction]:
    """One frame's hosted JSON (with tracker ids) and prediction; its MOT rows written."""
    from cvserve.streams.runner import StreamEncoder

    params, render = backend.params, backend.render
    result = backend.engine.infer_now(backend.model_id, image, params, StreamEncoder(render))
    prediction, body = result.prediction, result.body
    if tracker is not None and isinstance(prediction.result, Detections):
        order, _, ids = tracker.update(prediction.result)
        prediction.result = prediction.result.select(np.asarray(order, np.int64))
        preds = body["predictions"]
        body["predictions"] = [
            preds[i] | {"tracker_id": t} for i, t in zip(order, ids, strict=True)
        ]
        for pred in body["predictions"]:
            tracker_id = pred["tracker_id"]
            if tracker_id is not None and mot is not None:
                x, y = pred["x"] - pred["width"] / 2, pred["y"] - pred["height"] / 2
                mot.write(f"{index + 1},{tracker_id},{x:.2f},{y:.2f},{pred['width']:.2f},"
                          f"{pred['height']:.2f},{pred['confidence']:.4f},-1,-1,-1\n")  # fmt: skip
    return body, prediction
