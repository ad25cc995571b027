"""What `cvserve predict` is asked to do, what it reports, and the names of its outputs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FORMATS = ("json", "jsonl", "coco")
JSONL_NAME = "predictions.jsonl"
COCO_NAME = "coco.json"
FAILURES_NAME = "failures.jsonl"
IMAGES_DIR = "images"
DETECTION_TASKS = ("object-detection", "instance-segmentation", "keypoint-detection")


class PredictError(Exception):
    """A problem with the command itself (bad source, unknown model, wrong format)."""


@dataclass
class PredictOptions:
    source: str
    model_id: str
    out: Path = Path("predictions")
    format: str = "json"
    save_images: bool = False
    url: str | None = None
    api_key: str | None = None
    confidence: float | None = None
    overlap: float | None = None
    classes: str | None = None
    max_detections: int | None = None
    keypoint_confidence: float | None = None
    mask_format: str | None = None
    concurrency: int | None = None
    models_dir: Path | None = None
    timeout: float = 120.0


@dataclass
class Summary:
    model_id: str
    task: str
    found: int = 0
    skipped: int = 0
    done: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    per_class: Counter = field(default_factory=Counter)
    detections: int = 0
    elapsed_s: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0
