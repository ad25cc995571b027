"""The tasks a model can serve and the knobs of one prediction: plain values that the SDK,
the renderers and the wire formats share with the models (so none of them imports models/)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Task(str, Enum):
    OBJECT_DETECTION = "object-detection"
    INSTANCE_SEGMENTATION = "instance-segmentation"
    KEYPOINT_DETECTION = "keypoint-detection"
    CLASSIFICATION = "classification"
    SEMANTIC_SEGMENTATION = "semantic-segmentation"
    PROMPTABLE_SEGMENTATION = "promptable-segmentation"  # SAM: used by the jobs API

    @property
    def detection_like(self) -> bool:
        return self in (
            Task.OBJECT_DETECTION,
            Task.INSTANCE_SEGMENTATION,
            Task.KEYPOINT_DETECTION,
        )


@dataclass(frozen=True)
class InferParams:
    """Post-processing knobs, as fractions (the HTTP layer converts percentages)."""

    confidence: float = 0.4
    iou: float = 0.3
    max_detections: int = 300
    class_filter: frozenset[str] | None = None
    keypoint_confidence: float = 0.0
    # Opt-in speed shortcut: decode/resize may approximate the reference pixels.
    fast_preprocess: bool = False

    @classmethod
    def defaults_for(cls, task: Task) -> InferParams:
        if task is Task.SEMANTIC_SEGMENTATION or task is Task.CLASSIFICATION:
            return cls(confidence=0.5)
        return cls()
