"""The doors' encoders: what the engine's typed result becomes on the wire.

- `HostedAnswer`: the hosted route's (and `/infer`'s) response body, ready to send: the
  JSON as bytes, or the annotated JPEG. Encoding it on the lane keeps the event loop free,
  and on Ray only those bytes travel back from the model replica.
- `HostedEncoder`: the hosted JSON as a dict with the typed prediction (and, on request,
  the photo's pixels), for in-process callers that keep working on it (`cvserve predict`,
  the benchmark).
Encoders are small, picklable values: on Ray the ingress hands one to the model replica.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

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


JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True)
class Answer:
    """A response body and its media type."""

    content: bytes
    media_type: str


@dataclass(frozen=True)
class HostedAnswer:
    render: RenderOptions
    visualization_key: bool = False  # `/infer` answers always carry it (the SDK reads it)

    @property
    def needs_pixels(self) -> bool:
        return self.render.format != "json"

    def encode(self, inference: Inference) -> Answer:
        rendered = HostedEncoder(self.render).encode(inference)
        if self.render.format == "image" and rendered.jpeg is not None:
            return Answer(rendered.jpeg, "image/jpeg")
        body = rendered.body or {}
        if self.visualization_key:
            body.setdefault("visualization", None)
        return Answer(orjson.dumps(body, option=JSON_OPTIONS), "application/json")


def json_array(answers: list[Answer]) -> bytes:
    """Several JSON answers as one JSON array, without decoding them."""
    return b"[" + b",".join(a.content for a in answers) + b"]"


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
