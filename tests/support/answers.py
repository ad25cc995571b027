"""Comparing answers: the same JSON apart from what is new in every answer."""

from __future__ import annotations

from typing import Any

PER_ANSWER = frozenset({"time", "inference_id", "detection_id"})


def strip(body: Any, drop: frozenset[str] = PER_ANSWER) -> Any:
    """`body` without the keys in `drop`, at any depth."""
    if isinstance(body, dict):
        return {k: strip(v, drop) for k, v in body.items() if k not in drop}
    if isinstance(body, list):
        return [strip(v, drop) for v in body]
    return body
