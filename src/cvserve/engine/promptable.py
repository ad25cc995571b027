"""Promptable segmentation (SAM): the costly embedding once per image, cheap prompts after."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cvserve.errors import BadRequest
from cvserve.models.base import Model
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.promptable import PromptableModel


@dataclass(frozen=True)
class Prompt:
    """Points and/or one box on an image, in 0..1 of its size (`normalised`) or in pixels."""

    points: tuple[tuple[float, float, int], ...] = ()  # (x, y, label: 1 foreground, 0 not)
    box: tuple[float, float, float, float] | None = None  # (x_min, y_min, x_max, y_max)
    normalised: bool = True


@dataclass
class PromptResult:
    mask: np.ndarray  # bool (H, W), the image's own size
    score: float
    width: int
    height: int
    cached: bool  # the embedding came from the cache
    seconds: float


def promptable(model: Model, model_id: str) -> PromptableModel:
    """`model` as a promptable model, or 400 when it is not one."""
    if not isinstance(model, PromptableModel):
        raise BadRequest(f"model {model_id} is not a promptable (SAM) segmentation model")
    return model


def segment(
    model: PromptableModel,
    key: str,
    load_image: Callable[[], np.ndarray],
    prompt: Prompt,
    ctx: RunContext = IN_PROCESS,
) -> PromptResult:
    """Embed (cached under `key`; the image is only decoded on a miss), then decode a mask."""
    t0 = time.perf_counter()
    cached = key in model.cache
    emb = model.embed_cached(key, load_image, ctx)
    sx, sy = (emb.width, emb.height) if prompt.normalised else (1.0, 1.0)
    pts = np.array([[x * sx, y * sy] for x, y, _ in prompt.points], np.float32).reshape(-1, 2)
    labels = np.array([label for _, _, label in prompt.points], np.float32)
    xyxy = None
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        xyxy = np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy], np.float32)
    has_points = len(pts) > 0
    mask, score = model.segment(
        emb, pts if has_points else None, labels if has_points else None, xyxy, ctx
    )
    return PromptResult(mask, score, emb.width, emb.height, cached, time.perf_counter() - t0)
