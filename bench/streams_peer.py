"""The peer's video path: `inference`'s InferencePipeline on a video file, offline.

Runs in the peer's own venv (bench/README.md), called by bench/streams_bench.py:

    .cache/peer-venv/bin/python bench/streams_peer.py MODEL.onnx CLIP.mp4 --threads 2

The pipeline cannot fetch a model from its hub here, so `init_with_custom_logic` is given an
`on_video_frame` that runs the same ONNX as cvserve, on an ONNX Runtime session using every
core (one frame at a time, as the pipeline calls it): the frame letterboxed to 640 (OpenCV
linear resize, grey 114 borders), confidence 0.4, NMS at IoU 0.3 (OpenCV), and the peer's
own ByteTrack (supervision). What is compared is its video path: OpenCV's decoding, its
buffering and dispatch, on the file as fast as it goes (the pipeline's default for files:
every frame, none dropped). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("clip")
    p.add_argument("--threads", type=int, default=2, help="the session's intra-op threads")
    p.add_argument("--conf", type=float, default=0.4)
    p.add_argument("--iou", type=float, default=0.3)
    a = p.parse_args()
    for key, value in {
        "DISABLE_VERSION_CHECK": "True",
        "METRICS_ENABLED": "False",
        "ENABLE_USAGE_TRACKING": "False",
        "ROBOFLOW_API_KEY": "offline",
    }.items():
        os.environ.setdefault(key, value)
    out: dict[str, object] = {}
    try:
        import importlib.metadata as md

        out["version"] = md.version("inference")
        import cv2
        import numpy as np
        import onnxruntime as ort
        import supervision as sv
        from inference import InferencePipeline

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        opts.log_severity_level = 3
        session = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        size = 640
        tracker = sv.ByteTrack()

        def letterbox(bgr: np.ndarray) -> tuple[np.ndarray, float, int, int]:
            h, w = bgr.shape[:2]
            r = min(size / h, size / w)
            nw, nh = round(w * r), round(h * r)
            left, top = (size - nw) // 2, (size - nh) // 2
            canvas = np.full((size, size, 3), 114, np.uint8)
            canvas[top : top + nh, left : left + nw] = cv2.resize(
                bgr, (nw, nh), interpolation=cv2.INTER_LINEAR
            )
            x = canvas[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
            return np.ascontiguousarray(x), r, left, top

        def predict(bgr: np.ndarray) -> sv.Detections:
            x, r, left, top = letterbox(bgr)
            pred = session.run(None, {name: x})[0][0]  # (4 + nc, anchors)
            scores = pred[4:].max(0)
            keep = scores >= a.conf
            boxes, scores = pred[:4, keep].T, scores[keep]
            cls = pred[4:, keep].argmax(0)
            xywh = np.stack(
                [(boxes[:, 0] - boxes[:, 2] / 2 - left) / r, (boxes[:, 1] - boxes[:, 3] / 2 - top) / r,
                 boxes[:, 2] / r, boxes[:, 3] / r], axis=1,
            )  # fmt: skip
            idx = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), a.conf, a.iou)
            idx = np.asarray(idx, np.int64).reshape(-1)
            xyxy = xywh[idx].copy()
            xyxy[:, 2:] += xyxy[:, :2]
            det = sv.Detections(
                xyxy=xyxy.astype(np.float32), confidence=scores[idx], class_id=cls[idx]
            )
            return tracker.update_with_detections(det)

        # The same logic alone, on the clip's first frames decoded beforehand: what the
        # pipeline would reach if its video path cost nothing.
        cap = cv2.VideoCapture(a.clip)
        first = [cap.read()[1] for _ in range(30)]
        cap.release()
        predict(first[0])
        t0 = time.perf_counter()
        for bgr in first:
            predict(bgr)
        alone_fps = len(first) / (time.perf_counter() - t0)
        tracker.reset()
        times: list[float] = []
        boxes: list[int] = []

        def on_video_frame(frames):
            return [predict(f.image) for f in frames]

        def on_prediction(result, frame) -> None:
            times.append(time.perf_counter())
            boxes.append(len(result))

        pipeline = InferencePipeline.init_with_custom_logic(
            video_reference=a.clip, on_video_frame=on_video_frame, on_prediction=on_prediction
        )
        t0 = time.perf_counter()
        pipeline.start()
        pipeline.join()
        wall = time.perf_counter() - t0
        n = len(times)
        out.update(
            frames=n,
            wall_s=wall,
            fps_whole=n / wall if wall else None,
            fps=(n - 1) / (times[-1] - times[0]) if n > 10 else None,  # first to last result
            boxes_per_frame=float(np.median(boxes)) if boxes else None,
            fps_logic_alone=alone_fps,  # on_video_frame's work alone, frames decoded before
            note="file as fast as it goes; its own decode buffer and ByteTrack",
            onnxruntime=ort.__version__,
            opencv=cv2.__version__,
        )
    except Exception as e:  # report why, exactly, rather than crash the benchmark
        import traceback

        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-3000:]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
