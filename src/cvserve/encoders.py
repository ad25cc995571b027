"""The doors' encoders: what the engine's typed result becomes on the wire.

`HostedEncoder` answers as the hosted route does (its JSON, the annotated JPEG, or both),
for the hosted route, `/infer/*`, `cvserve predict` and the benchmark. Encoders are small,
picklable values: on Ray the ingress hands one to the model replica, which encodes there.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvserve.engine.pipeline import Inference
from cvserve.params import RenderOptions
from cvserve.render.annotate import annotated_jpeg
from cvserve.results import Prediction
from cvserve.wire.hosted import prediction_json


@dataclass
class Rendered:
    """One image's answer: the hosted JSON and/or the annotated JPEG, as `render` asked."""

    prediction: Prediction
    body: dict[str, Any] | None = None  # format json / image_and_json
    jpeg: bytes | None = None  # format image / image_and_json
    image: np.ndarray | None = None  # the photo's pixels, when the caller asked to keep them


@dataclass(frozen=True)
class HostedEncoder:
    render: RenderOptions
    keep_pixels: bool = False  # the caller draws on the photo itself (cvserve predict)

    @property
    def needs_pixels(self) -> bool:
        return self.render.format != "json" or self.keep_pixels

    def encode(self, inference: Inference) -> Rendered:
        render, params, prediction = self.render, inference.params, inference.prediction
        image = inference.pixels
        jpeg = None
        if render.format != "json" and image is not None:
            jpeg = annotated_jpeg(image, prediction, params, render)
        body = None
        if render.format != "image":
            body = prediction_json(
                prediction,
                render,
                confidence=params.confidence,
                keypoint_confidence=params.keypoint_confidence,
                elapsed_s=time.perf_counter() - inference.started,
            )
            if jpeg is not None:
                body["visualization"] = base64.b64encode(jpeg).decode("ascii")
        return Rendered(prediction, body, jpeg, image if self.keep_pixels else None)
