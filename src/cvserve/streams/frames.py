"""A stream's newest frame drawn for people: the prediction, tracker ids, lines and zones.

Drawn only when someone asks (frame.jpg, MJPEG): a stream nobody watches encodes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from cvserve.images import encode_jpeg
from cvserve.render.annotate import annotate, color
from cvserve.results import Detections

if TYPE_CHECKING:
    from cvserve.streams.runner import Latest, StreamRun

LINE_RGB = (255, 255, 0)
ZONE_RGB = (0, 200, 255)


def annotated_frame(run: StreamRun, latest: Latest) -> bytes:
    prediction = latest.prediction
    img = annotate(
        latest.frame.image,
        prediction,
        stroke=max(1, run.render.stroke),
        labels=run.render.labels,
        confidence=run.params.confidence,
        keypoint_confidence=run.params.keypoint_confidence,
    )
    det = prediction.result
    if latest.tracker_ids is not None and isinstance(det, Detections):
        scale = max(0.4, min(img.shape[:2]) / 900.0)
        for i, tracker_id in enumerate(latest.tracker_ids):
            if tracker_id is None:
                continue
            x1, y1 = (int(v) for v in det.xyxy[i][:2])
            cv2.putText(img, f"#{tracker_id}", (x1 + 2, max(12, y1 - 4)),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, color(int(det.class_id[i])), 1,
                        cv2.LINE_AA)  # fmt: skip
    for zone in run.request.zones:
        pts = np.round(np.asarray(zone.polygon)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(img, [pts], True, ZONE_RGB, 2, cv2.LINE_AA)
    for line in run.request.lines:
        start = tuple(int(round(v)) for v in line.start)
        end = tuple(int(round(v)) for v in line.end)
        cv2.line(img, start, end, LINE_RGB, 2, cv2.LINE_AA)
    return encode_jpeg(img)
