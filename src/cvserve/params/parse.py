"""Values of the declared parameters, parsed the same way whichever door they came through.

Every door reduces a value to its text (a query string already is; a JSON number, boolean or
list is spelled as JSON spells it), and one text parser per kind reads it, so a malformed
value gets the same message everywhere, naming the parameter as that door calls it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cvserve.errors import BadRequest
from cvserve.params.spec import PARAM, PARAMS, Param
from cvserve.tasks import InferParams, Task

Values = dict[str, Any]  # parameter name -> parsed value, only for those that were given


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


def parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        either = " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"
        raise BadRequest(f"parameter {name} must be {either}, got {value!r}")
    return value


def parse_classes(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    names = frozenset(c.strip() for c in raw.split(",") if c.strip())
    return names or None


def parse_text(param: Param, label: str, raw: str) -> Any:
    """`raw` read as `param`'s kind; a refusal names the parameter `label`."""
    if param.kind == "fraction":
        return parse_fraction(label, raw)
    if param.kind == "integer":
        return parse_int(label, raw, int(param.low), int(param.high))
    if param.kind == "boolean":
        return parse_bool(label, raw)
    if param.kind == "choice":
        return parse_choice(label, raw, param.choices)
    if param.kind == "names":
        return parse_classes(raw)
    return raw


def _given(param: Param, raw: str) -> bool:
    # An empty query value (`?confidence=`) or a default word means "not given".
    return raw not in param.words and (raw != "" or param.kind in ("text", "url"))


def read_query(query: Mapping[str, str]) -> Values:
    """The hosted route's query (and `cvserve predict`'s in-process run of it)."""
    values: Values = {}
    for param in PARAMS:
        raw = query.get(param.name) if param.hosted else None
        if raw is not None and _given(param, raw):
            values[param.name] = parse_text(param, param.name, raw)
    return values


def _json_text(value: Any) -> str:
    """A JSON value as JSON spells it, so `true` and `"true"` read alike."""
    return value if isinstance(value, str) else json.dumps(value)


def _names(label: str, value: Any) -> frozenset[str] | None:
    if isinstance(value, str):
        return parse_classes(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value) or None
    raise BadRequest(f"parameter {label} must be a list of class names, got {value!r}")


def read_body(body: Mapping[str, Any]) -> Values:
    """The `/infer/*` JSON body's parameter fields."""
    values: Values = {}
    for param in PARAMS:
        value = body.get(param.body) if param.body else None
        if value is None or param.body is None:
            continue
        if param.kind == "names":
            values[param.name] = _names(param.body, value)
            continue
        raw = _json_text(value)
        if _given(param, raw):
            values[param.name] = parse_text(param, param.body, raw)
    return values


def read_flags(given: Mapping[str, str | None]) -> Values:
    """`cvserve predict`'s options, keyed by parameter name; a refusal names the option."""
    values: Values = {}
    for name, raw in given.items():
        param = PARAM[name]
        if raw is not None and _given(param, raw):
            values[name] = parse_text(param, param.flag or name, raw)
    return values


def build(values: Values, task: Task) -> tuple[InferParams, RenderOptions]:
    """The post-processing knobs and render options, the task's defaults where not given."""
    defaults = InferParams.defaults_for(task)
    params = InferParams(
        confidence=values.get("confidence", defaults.confidence),
        iou=values.get("overlap", defaults.iou),
        max_detections=values.get("max_detections", defaults.max_detections),
        class_filter=values.get("classes"),
        keypoint_confidence=values.get("keypoint_confidence", defaults.keypoint_confidence),
        fast_preprocess=values.get("fast", False),
    )
    visualize = values.get("visualize_predictions", False)
    render = RenderOptions(
        format=values.get("format", "image_and_json" if visualize else "json"),
        stroke=values.get("stroke", 1),
        labels=values.get("labels", False),
        image_name=values.get("name"),
        mask_format=values.get("response_mask_format", "polygon"),
    )
    return params, render


def parse_hosted(query: Mapping[str, str], task: Task) -> tuple[InferParams, RenderOptions]:
    return build(read_query(query), task)


def parse_infer(body: Mapping[str, Any], task: Task) -> tuple[InferParams, RenderOptions]:
    return build(read_body(body), task)
