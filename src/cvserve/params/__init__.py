"""Inference parameters: declared once (`spec`), parsed alike on every door (`parse`),
documented from the same records (`schema`)."""

from cvserve.params.parse import (
    RenderOptions,
    parse_bool,
    parse_classes,
    parse_fraction,
    parse_hosted,
    parse_infer,
    parse_int,
    read_flags,
)
from cvserve.params.spec import MAX_DETECTIONS_LIMIT, PARAM, PARAMS

__all__ = [
    "MAX_DETECTIONS_LIMIT",
    "PARAM",
    "PARAMS",
    "RenderOptions",
    "parse_bool",
    "parse_classes",
    "parse_fraction",
    "parse_hosted",
    "parse_infer",
    "parse_int",
    "read_flags",
]
