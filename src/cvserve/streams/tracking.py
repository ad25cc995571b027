"""Per-stream multi-object tracking: the `trackers` library on supervision detections.

The engine's typed `Detections` go in; out come their indices in the tracker's order with
a `tracker_id` each (None until the tracker confirms a track, as trackers reports -1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cvserve.results import Detections


def to_supervision(det: Detections) -> Any:
    """sv.Detections of the boxes, carrying each one's index into `det` (data["index"])."""
    import supervision as sv

    names = np.array([det.name_of(i) for i in range(len(det))], dtype=object)
    return sv.Detections(
        xyxy=det.xyxy.astype(np.float32).reshape(-1, 4),
        confidence=det.confidence.astype(np.float32),
        class_id=det.class_id.astype(int),
        data={"index": np.arange(len(det)), "class_name": names},
    )


class Tracker:
    """One stream's tracker (bytetrack, sort or ocsort), fed one frame at a time."""

    def __init__(self, kind: str, confidence: float, frame_rate: float | None) -> None:
        import trackers

        rate = float(frame_rate) if frame_rate and frame_rate > 0 else 30.0
        # New tracks start at the stream's own threshold: the library's defaults (0.6-0.7)
        # would never track an object a caller asked for at 40 %.
        floor = max(0.01, confidence)
        if kind == "bytetrack":
            self._impl: Any = trackers.ByteTrackTracker(
                frame_rate=rate,
                track_activation_threshold=floor,
                high_conf_det_threshold=floor,
                minimum_consecutive_frames=1,
            )
        elif kind == "sort":
            self._impl = trackers.SORTTracker(
                frame_rate=rate, track_activation_threshold=floor, minimum_consecutive_frames=1
            )
        elif kind == "ocsort":
            self._impl = trackers.OCSORTTracker(
                frame_rate=rate, high_conf_det_threshold=floor, minimum_consecutive_frames=1
            )
        else:
            raise ValueError(f"unknown tracker {kind!r}")

    def update(self, det: Detections) -> tuple[list[int], Any, list[int | None]]:
        """(indices into `det` in the tracker's order, them as sv.Detections, their ids)."""
        tracked = self._impl.update(to_supervision(det))
        order = np.asarray(tracked.data.get("index", np.zeros(0, int)), dtype=np.int64)
        ids = [int(t) if t >= 0 else None for t in np.asarray(tracked.tracker_id).tolist()]
        return order.tolist(), tracked, ids
