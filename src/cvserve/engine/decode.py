"""The decode policy: bytes -> the pixels a model is given, exact by default.

Exact: the full image, decoded as the model's reference preprocessing expects. Fast (opt-in
per request, or per model with `preprocess.fast_decode`): a JPEG decoded at a reduced size
and, for Pillow-resized models, an OpenCV area resize; results are then mapped back to the
full photo's pixels (see `fastpath`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cvserve.engine import fastpath
from cvserve.images import decode_image
from cvserve.models.base import InferParams, Model
from cvserve.models.context import RunContext
from cvserve.results import Prediction
from cvserve.settings import Settings


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # RGB uint8 (H, W, 3): what the model is given
    width: int  # the photo's own size, which results are reported in
    height: int
    fast: bool  # decoded by the fast policy (pixels may be smaller than the photo)

    def full_size(self) -> np.ndarray:
        """The photo at its own size, for drawing on."""
        if self.pixels.shape[:2] == (self.height, self.width):
            return self.pixels
        return cv2.resize(self.pixels, (self.width, self.height), interpolation=cv2.INTER_LINEAR)

    def predict(self, model: Model, params: InferParams, ctx: RunContext) -> Prediction:
        """Run the model on these pixels; the result is in the photo's own pixels."""
        if not self.fast:
            return model.predict(self.pixels, params, ctx)
        small = fastpath.cheap_resize(self.pixels, model)
        return fastpath.rescale(model.predict(small, params, ctx), self.width, self.height)


def decode(
    model: Model, source: bytes | np.ndarray, params: InferParams, settings: Settings
) -> Decoded:
    """Encoded bytes (or already-decoded RGB pixels) -> Decoded, by the model's policy."""
    if isinstance(source, np.ndarray):
        return Decoded(source, source.shape[1], source.shape[0], fast=False)
    limits = {"max_pixels": settings.max_image_pixels, "max_side": settings.max_image_side}
    if fastpath.enabled(model, params.fast_preprocess):
        image, width, height = fastpath.decode(source, model, **limits)
        return Decoded(image, width, height, fast=True)
    image = decode_image(source, **limits)
    return Decoded(image, image.shape[1], image.shape[0], fast=False)
