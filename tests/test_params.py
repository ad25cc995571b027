"""Query parameters of the hosted route: percent vs fraction, strict parsing, defaults."""

from __future__ import annotations

import pytest

from cvserve.errors import BadRequest
from cvserve.models.base import Task
from cvserve.params import (
    MAX_DETECTIONS_LIMIT,
    parse_bool,
    parse_classes,
    parse_fraction,
    parse_hosted,
    parse_int,
)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("40", 0.40),
        ("0.4", 0.40),
        ("40.0", 0.40),
        ("  40 ", 0.40),
        ("100", 1.0),
        ("1", 0.01),  # >= 1 is a percentage
        ("0.999", 0.999),
        ("0", 0.0),
        ("0.0", 0.0),
        ("1e1", 0.10),
        ("99.5", 0.995),
    ],
)
def test_fraction_or_percent(raw, value):
    assert parse_fraction("confidence", raw) == pytest.approx(value)


@pytest.mark.parametrize(
    "raw", ["", "abc", "-1", "-0.5", "100.01", "101", "nan", "inf", "-inf", "4O", "1,5"]
)
def test_fraction_rejects(raw):
    with pytest.raises(BadRequest, match="overlap"):
        parse_fraction("overlap", raw)


@pytest.mark.parametrize(("raw", "value"), [("3", 3), ("3.0", 3), ("1", 1), ("10000", 10000)])
def test_int(raw, value):
    assert parse_int("max_detections", raw, 1, MAX_DETECTIONS_LIMIT) == value


@pytest.mark.parametrize("raw", ["0", "3.5", "abc", "", "1e400", "nan", "10001", "-2"])
def test_int_rejects(raw):
    with pytest.raises(BadRequest, match="max_detections"):
        parse_int("max_detections", raw, 1, MAX_DETECTIONS_LIMIT)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("", False),
    ],
)
def test_bool(raw, value):
    assert parse_bool("labels", raw) is value


@pytest.mark.parametrize("raw", ["maybe", "2", "truee", "none"])
def test_bool_rejects(raw):
    with pytest.raises(BadRequest, match="labels"):
        parse_bool("labels", raw)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (None, None),
        ("", None),
        (",,", None),
        ("dog", {"dog"}),
        ("dog,cat", {"dog", "cat"}),
        (" dog , cat ,", {"dog", "cat"}),
        ("traffic light,cat", {"traffic light", "cat"}),
    ],
)
def test_classes(raw, value):
    got = parse_classes(raw)
    assert (got is None) if value is None else (got == frozenset(value))


@pytest.mark.parametrize(
    ("task", "confidence"),
    [
        (Task.OBJECT_DETECTION, 0.4),
        (Task.INSTANCE_SEGMENTATION, 0.4),
        (Task.KEYPOINT_DETECTION, 0.4),
        (Task.SEMANTIC_SEGMENTATION, 0.5),
    ],
)
def test_defaults(task, confidence):
    params, render = parse_hosted({}, task)
    assert params.confidence == pytest.approx(confidence)
    assert params.iou == pytest.approx(0.3)
    assert params.max_detections == 300
    assert params.class_filter is None
    assert params.keypoint_confidence == 0.0
    assert (render.format, render.stroke, render.labels) == ("json", 1, False)
    assert render.image_name is None and render.mask_format == "polygon"


def test_all_parameters():
    params, render = parse_hosted(
        {
            "confidence": "25",
            "overlap": "0.5",
            "max_detections": "7",
            "classes": "a,b",
            "keypoint_confidence": "60",
            "format": "image_and_json",
            "stroke": "4",
            "labels": "True",
            "name": "YOUR_IMAGE.jpg",
            "response_mask_format": "rle",
            "api_key": "ignored-here",
            "unknown": "ignored",
        },
        Task.INSTANCE_SEGMENTATION,
    )
    assert params.confidence == pytest.approx(0.25)
    assert params.iou == pytest.approx(0.5)
    assert params.max_detections == 7
    assert params.class_filter == frozenset({"a", "b"})
    assert params.keypoint_confidence == pytest.approx(0.6)
    assert (render.format, render.stroke, render.labels) == ("image_and_json", 4, True)
    assert render.image_name == "YOUR_IMAGE.jpg"
    assert render.mask_format == "rle"


@pytest.mark.parametrize("fmt", ["json", "image", "image_and_json", "JSON", " image "])
def test_formats(fmt):
    assert parse_hosted({"format": fmt}, Task.OBJECT_DETECTION)[1].format == fmt.strip().lower()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("confidence", "x"),
        ("overlap", "200"),
        ("max_detections", "0"),
        ("keypoint_confidence", "-3"),
        ("format", "xml"),
        ("stroke", "-1"),
        ("stroke", "101"),
        ("labels", "perhaps"),
        ("response_mask_format", "bitmap"),
    ],
)
def test_bad_parameter_names_itself(name, raw):
    with pytest.raises(BadRequest) as info:
        parse_hosted({name: raw}, Task.OBJECT_DETECTION)
    assert name in info.value.message
    assert info.value.status == 400
