"""Every inference parameter, declared once: the hosted query, the `/infer/*` JSON body,
`cvserve predict`'s options and the OpenAPI document are all read off these records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["fraction", "integer", "boolean", "choice", "names", "text", "url"]

FORMATS = ("json", "image", "image_and_json")
MASK_FORMATS = ("polygon", "rle")
MAX_DETECTIONS_LIMIT = 10_000
# inference-sdk types confidence as float | "best" | "default". "best" is the peer's
# per-model optimal threshold from training metrics; cvserve has none, so both mean the
# task's default.
CONFIDENCE_WORDS = ("default", "best")


@dataclass(frozen=True)
class Param:
    """One parameter. `name` is its hosted query name; `body` and `flags` are what the
    `/infer/*` body and `cvserve predict` call it (None/empty: that door has no such knob)."""

    name: str
    kind: Kind
    description: str
    low: float = 0
    high: float = 100
    choices: tuple[str, ...] = ()
    words: tuple[str, ...] = ()  # words that mean "the default", as inference-sdk sends them
    hosted: bool = True
    body: str | None = None
    flags: tuple[str, ...] = ()

    @property
    def flag(self) -> str | None:
        return self.flags[0] if self.flags else None


PARAMS: tuple[Param, ...] = (
    Param(
        "confidence",
        "fraction",
        "Minimum confidence: a fraction (0.4) or a percentage (40); `default`/`best` mean "
        "the task's default (0.4, or 0.5 for classification and semantic segmentation).",
        words=CONFIDENCE_WORDS,
        body="confidence",
        flags=("--confidence", "-c"),
    ),
    Param(
        "overlap",
        "fraction",
        "NMS IoU threshold, fraction or percentage (default 0.3).",
        body="iou_threshold",
        flags=("--overlap",),
    ),
    Param(
        "classes",
        "names",
        "Comma-separated class names to keep.",
        body="class_filter",
        flags=("--classes",),
    ),
    Param(
        "max_detections",
        "integer",
        f"At most this many detections (1-{MAX_DETECTIONS_LIMIT}, default 300).",
        low=1,
        high=MAX_DETECTIONS_LIMIT,
        body="max_detections",
        flags=("--max-detections",),
    ),
    Param(
        "keypoint_confidence",
        "fraction",
        "Drop keypoints below this confidence, fraction or percentage (default 0).",
        body="keypoint_confidence",
        flags=("--keypoint-confidence",),
    ),
    Param(
        "format",
        "choice",
        "`json` (default), `image` (the annotated JPEG) or `image_and_json` (JSON with a "
        "base64 `visualization`).",
        choices=FORMATS,
    ),
    Param(
        "visualize_predictions",
        "boolean",
        "Also answer the annotated image, base64 in `visualization`.",
        hosted=False,
        body="visualize_predictions",
    ),
    Param(
        "stroke",
        "integer",
        "Line width of the annotations, 0-100 (default 1).",
        low=0,
        high=100,
        body="visualization_stroke_width",
    ),
    Param(
        "labels",
        "boolean",
        "Draw class names on the annotated image.",
        body="visualization_labels",
    ),
    Param("name", "text", "Echoed back as `image_path` (classification)."),
    Param(
        "response_mask_format",
        "choice",
        "Instance masks as `polygon` points (default) or also as COCO `rle`.",
        choices=MASK_FORMATS,
        body="response_mask_format",
        flags=("--mask-format",),
    ),
    Param("image", "url", "URL of the image to fetch, instead of a body."),
    Param(
        "fast",
        "boolean",
        "Opt-in fast decode and resize: faster, pixels differ slightly from the reference.",
    ),
    Param("api_key", "text", "API key (also `Authorization: Bearer` or `api-key`)."),
)
PARAM = {p.name: p for p in PARAMS}
