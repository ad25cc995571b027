"""Query parameters of the hosted route, parsed strictly: a malformed one is a 400 naming it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from cvserve.errors import BadRequest
from cvserve.tasks import InferParams, Task

FORMATS = ("json", "image", "image_and_json")
MASK_FORMATS = ("polygon", "rle")
MAX_DETECTIONS_LIMIT = 10_000
# inference-sdk types confidence as float | "best" | "default". "best" is the peer's
# per-model optimal threshold from training metrics; cvserve has none, so both mean the
# task's default.
CONFIDENCE_WORDS = ("default", "best")


@dataclass(frozen=True)
class RenderOptions:
    format: str = "json"
    stroke: int = 1
    labels: bool = False
    image_name: str | None = None
    mask_format: str = "polygon"


def parse_fraction(name: str, raw: str) -> float:
    """'40' -> 0.40 and '0.4' -> 0.40: a value >= 1 is a percentage, below 1 a fraction."""
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"parameter {name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or value > 100:
        raise BadRequest(
            f"parameter {name} must be between 0 and 100 (percent) or 0 and 1, got {raw!r}"
        )
    return value / 100.0 if value >= 1 else value


def parse_int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        number = float(raw)
        if not number.is_integer():
            raise ValueError
        value = int(number)
    except (ValueError, OverflowError):
        raise BadRequest(f"parameter {name} must be an integer, got {raw!r}") from None
    if value < lo or value > hi:
        raise BadRequest(f"parameter {name} must be between {lo} and {hi}, got {raw!r}")
    return value


def parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off", ""):
        return False
    raise BadRequest(f"parameter {name} must be true or false, got {raw!r}")


def parse_classes(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    names = frozenset(c.strip() for c in raw.split(",") if c.strip())
    return names or None


def parse_hosted(query: Mapping[str, str], task: Task) -> tuple[InferParams, RenderOptions]:
    defaults = InferParams.defaults_for(task)
    get = query.get
    confidence = defaults.confidence
    if get("confidence") not in (None, "", *CONFIDENCE_WORDS):
        confidence = parse_fraction("confidence", query["confidence"])
    iou = defaults.iou
    if get("overlap") not in (None, ""):
        iou = parse_fraction("overlap", query["overlap"])
    max_det = defaults.max_detections
    if get("max_detections") not in (None, ""):
        max_det = parse_int("max_detections", query["max_detections"], 1, MAX_DETECTIONS_LIMIT)
    kp_conf = 0.0
    if get("keypoint_confidence") not in (None, ""):
        kp_conf = parse_fraction("keypoint_confidence", query["keypoint_confidence"])
    fmt = (get("format") or "json").strip().lower()
    if fmt not in FORMATS:
        raise BadRequest(f"parameter format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    stroke = 1
    if get("stroke") not in (None, ""):
        stroke = parse_int("stroke", query["stroke"], 0, 100)
    labels = parse_bool("labels", query["labels"]) if get("labels") is not None else False
    mask_format = (get("response_mask_format") or "polygon").strip().lower()
    if mask_format not in MASK_FORMATS:
        raise BadRequest(
            f"parameter response_mask_format must be polygon or rle, got {mask_format!r}"
        )
    fast = parse_bool("fast", query["fast"]) if get("fast") is not None else False
    params = InferParams(
        confidence=confidence,
        iou=iou,
        max_detections=max_det,
        class_filter=parse_classes(get("classes")),
        keypoint_confidence=kp_conf,
        fast_preprocess=fast,
    )
    render = RenderOptions(
        format=fmt, stroke=stroke, labels=labels, image_name=get("name"), mask_format=mask_format
    )
    return params, render
