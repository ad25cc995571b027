"""The one inference path every door takes: decode -> predict -> the door's encoder.

It runs on the caller's thread (a model's lane, the predict CLI's pool, the benchmark);
admission, lanes and deadlines are the engine's business around it. The engine returns
what the door's encoder makes of the typed result, and knows no wire format itself: the
encoder runs here, on the lane (off the event loop), and on Ray in the model replica, so
only its answer travels back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from cvserve.engine.decode import decode
from cvserve.models.base import InferParams, Model
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.results import Prediction
from cvserve.settings import Settings

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class Inference:
    """One image's typed result, handed to the door's encoder."""

    prediction: Prediction  # in the photo's own pixels
    params: InferParams
    started: float  # time.perf_counter() when the image's work began
    pixels: np.ndarray | None  # the photo, RGB at its own size, when the encoder needs it


class Encoder(Protocol[T_co]):
    """Turns an Inference into a door's answer (hosted JSON, an annotated JPEG, ...)."""

    @property
    def needs_pixels(self) -> bool:
        """Whether `encode` draws on the photo (the decoded pixels are then kept)."""
        ...

    def encode(self, inference: Inference) -> T_co: ...


def infer(
    model: Model,
    source: bytes | np.ndarray,
    params: InferParams,
    settings: Settings,
    encoder: Encoder[T],
    ctx: RunContext = IN_PROCESS,
) -> T:
    """Decode and predict one image, then encode it as the door asked. `ctx`: the call's
    deadline and scheduling hint (the engine's; in-process callers: none, alone)."""
    started = time.perf_counter()
    decoded = decode(model, source, params, settings)
    prediction = decoded.predict(model, params, ctx)
    pixels = decoded.full_size() if encoder.needs_pixels else None
    return encoder.encode(Inference(prediction, params, started, pixels))
