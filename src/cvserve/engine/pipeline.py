"""The one inference path every door takes: decode -> predict -> render.

It runs on the caller's thread (a model's lane, the predict CLI's pool, the benchmark);
admission, lanes and deadlines are the engine's business around it.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvserve.engine.decode import decode
from cvserve.models.base import InferParams, Model
from cvserve.params import RenderOptions
from cvserve.render.annotate import annotated_jpeg
from cvserve.results import Prediction
from cvserve.settings import Settings
from cvserve.wire.hosted import prediction_json


@dataclass
class Rendered:
    """One image's answer: the hosted JSON and/or the annotated JPEG, as `render` asked."""

    prediction: Prediction
    body: dict[str, Any] | None = None  # format json / image_and_json
    jpeg: bytes | None = None  # format image / image_and_json
    image: np.ndarray | None = None  # the photo's pixels, when the caller asked to keep them


def infer(
    model: Model,
    source: bytes | np.ndarray,
    params: InferParams,
    render: RenderOptions,
    settings: Settings,
    *,
    keep_pixels: bool = False,
) -> Rendered:
    """Decode, predict and render one image, as the hosted route answers it."""
    t0 = time.perf_counter()
    draw = render.format != "json"
    decoded = decode(model, source, params, settings)
    prediction = decoded.predict(model, params)
    image = decoded.full_size() if draw or keep_pixels else None
    jpeg = annotated_jpeg(image, prediction, params, render) if draw and image is not None else None
    body = None
    if render.format != "image":
        body = prediction_json(
            prediction,
            render,
            confidence=params.confidence,
            keypoint_confidence=params.keypoint_confidence,
            elapsed_s=time.perf_counter() - t0,
        )
        if jpeg is not None:
            body["visualization"] = base64.b64encode(jpeg).decode("ascii")
    return Rendered(prediction, body, jpeg, image if keep_pixels else None)
