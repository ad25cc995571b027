"""What `cvserve predict` is asked to do, what it reports, and the names of its outputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvserve.errors import BadRequest
from cvserve.params import PARAM, read_flags

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FORMATS = ("json", "jsonl", "coco")
JSONL_NAME = "predictions.jsonl"
COCO_NAME = "coco.json"
FAILURES_NAME = "failures.jsonl"
IMAGES_DIR = "images"
DETECTION_TASKS = ("object-detection", "instance-segmentation", "keypoint-detection")
# PredictOptions' fields that are inference parameters, by the parameter's (hosted) name.
PARAM_FIELDS = {
    "confidence": "confidence",
    "overlap": "overlap",
    "classes": "classes",
    "max_detections": "max_detections",
    "keypoint_confidence": "keypoint_confidence",
    "response_mask_format": "mask_format",
}


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


def parameters_from_flags(given: Mapping[str, str | None]) -> dict[str, Any]:
    """PredictOptions fields from the command's parameter options (raw text, by parameter
    name), parsed by the parameter spec before any image is read."""
    try:
        values = read_flags(given)
    except BadRequest as e:
        raise PredictError(e.message) from None
    # Class names stay the text given: both backends send it on as the `classes` parameter.
    return {
        PARAM_FIELDS[name]: given[name] if PARAM[name].kind == "names" else value
        for name, value in values.items()
    }


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
