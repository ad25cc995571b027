"""Typed, task-agnostic results. Every model's output becomes one of these; every renderer
(hosted JSON, annotated image, platform JSON) consumes them. All coordinates are in the
pixels of the input image as received (after EXIF orientation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class BoxMask:
    """An instance mask stored only inside its box: `mask[r, c]` is pixel (x0 + c, y0 + r)."""

    x0: int
    y0: int
    mask: np.ndarray  # bool, shape (h, w)

    def full(self, width: int, height: int) -> np.ndarray:
        """The mask pasted into a full-size boolean image (for tests and tools, not hot paths)."""
        out = np.zeros((height, width), dtype=bool)
        h, w = self.mask.shape
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.mask
        return out


@dataclass
class Detections:
    """Boxes (x1, y1, x2, y2) with scores and class ids; optional masks and keypoints.

    `keypoints` has shape (N, K, 3): x, y, confidence per keypoint.
    """

    xyxy: np.ndarray  # float32 (N, 4)
    confidence: np.ndarray  # float32 (N,)
    class_id: np.ndarray  # int64 (N,)
    class_names: list[str]
    masks: list[BoxMask] | None = None
    keypoints: np.ndarray | None = None
    keypoint_names: list[str] = field(default_factory=list)
    skeleton: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @classmethod
    def empty(cls, class_names: list[str]) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            confidence=np.zeros((0,), np.float32),
            class_id=np.zeros((0,), np.int64),
            class_names=class_names,
        )

    def name_of(self, i: int) -> str:
        cid = int(self.class_id[i])
        return self.class_names[cid] if 0 <= cid < len(self.class_names) else str(cid)

    def select(self, keep: np.ndarray) -> Detections:
        """A subset by boolean mask or index array, keeping every attached field aligned."""
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return Detections(
            xyxy=self.xyxy[idx],
            confidence=self.confidence[idx],
            class_id=self.class_id[idx],
            class_names=self.class_names,
            masks=[self.masks[i] for i in idx] if self.masks is not None else None,
            keypoints=self.keypoints[idx] if self.keypoints is not None else None,
            keypoint_names=self.keypoint_names,
            skeleton=self.skeleton,
        )


@dataclass
class Classification:
    """Scores over all classes. Single-label scores sum to 1; multi-label ones need not."""

    scores: np.ndarray  # float32 (C,)
    class_names: list[str]
    multilabel: bool = False


@dataclass
class SemanticMask:
    """A class id per input pixel, with the winning class's confidence."""

    class_map: np.ndarray  # uint8/uint16 (H, W)
    confidence: np.ndarray  # float32 (H, W) in 0..1
    class_names: list[str]


Result = Detections | Classification | SemanticMask


@dataclass
class Prediction:
    """What a model returns for one image: the result plus the input size it refers to."""

    result: Result
    width: int
    height: int
