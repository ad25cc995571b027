"""Generic ONNX classifiers and semantic segmenters, configured by their manifest."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cvserve.models.base import InferParams
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.manifest import Manifest
from cvserve.models.onnx_model import OnnxModel
from cvserve.models.preprocess import Transform
from cvserve.models.registry import FamilyOptions, family
from cvserve.models.runtime import RuntimeOptions
from cvserve.results import Classification, Prediction, SemanticMask


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def looks_like_probabilities(scores: np.ndarray) -> bool:
    return bool(scores.min() >= 0.0 and scores.max() <= 1.0 and abs(scores.sum() - 1.0) < 1e-3)


def activate(raw: np.ndarray, activation: str, multilabel: bool) -> np.ndarray:
    if activation == "softmax":
        return softmax(raw)
    if activation == "sigmoid":
        return sigmoid(raw)
    if activation == "none":
        return raw
    # "auto": keep probabilities as they are, otherwise apply the task's usual activation.
    if multilabel:
        return raw if raw.min() >= 0.0 and raw.max() <= 1.0 else sigmoid(raw)
    return raw if looks_like_probabilities(raw) else softmax(raw)


class ClassifierOptions(FamilyOptions):
    output: int = 0  # which graph output holds the scores
    activation: str = "auto"  # softmax, sigmoid, none, or auto (see `activate`)
    class_offset: int = 0  # leading scores no class name has, e.g. a background slot


class Classifier(OnnxModel):
    def __init__(self, model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions):
        super().__init__(model_id, manifest, folder, options)
        self.options = ClassifierOptions.read(model_id, manifest.postprocess)

    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        tensor, _ = self.preprocess(image, ctx)
        raw = self.run(tensor, ctx)[self.options.output]
        raw = np.asarray(raw, np.float32).reshape(-1)
        scores = activate(raw, self.options.activation, self.manifest.multilabel)
        scores = scores.astype(np.float32)
        names = self.class_names or [str(i) for i in range(scores.size)]
        if self.options.class_offset:
            scores = scores[self.options.class_offset :]
        return Prediction(
            Classification(scores[: len(names)], names[: scores.size], self.manifest.multilabel),
            image.shape[1],
            image.shape[0],
        )


class SemanticOptions(FamilyOptions):
    output: int = 0  # which graph output holds the planes
    kind: str = "auto"  # foreground, probabilities, logits, or auto (by the plane count)
    minmax_normalize: bool = False  # scale the output to 0..1 first (uncalibrated maps)


class SemanticSegmenter(OnnxModel):
    """[1,C,H,W] logits/probabilities, or [1,1,H,W] / [1,H,W] foreground probability."""

    def __init__(self, model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions):
        super().__init__(model_id, manifest, folder, options)
        self.options = SemanticOptions.read(model_id, manifest.postprocess)

    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        tensor, transform = self.preprocess(image, ctx)
        out = np.asarray(self.run(tensor, ctx)[self.options.output])
        kind = self.options.kind
        if out.ndim == 3:
            out = out[:, None]
        out = out[0].astype(np.float32, copy=False)  # (C, H, W)
        if self.options.minmax_normalize:
            lo, hi = float(out.min()), float(out.max())
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        h, w = image.shape[:2]
        names = self.class_names
        if kind == "foreground" or (kind == "auto" and out.shape[0] == 1):
            prob = _to_image(out[0], transform, self.input_size, w, h)
            fg = prob >= params.confidence
            class_map = fg.astype(np.uint8)
            confidence = np.where(fg, prob, 1.0 - prob).astype(np.float32)
            names = names or ["background", "foreground"]
        else:
            probs = out if kind == "probabilities" else softmax(out, axis=0)
            if probs.shape[0] <= 8:
                # Few classes: upsample every plane, then argmax (smooth, exact edges).
                planes = np.stack([_to_image(p, transform, self.input_size, w, h) for p in probs])
                class_map = planes.argmax(0)
                confidence = planes.max(0)
            else:
                # Many classes: argmax at model resolution, nearest-neighbour upsample.
                class_map = _to_image(
                    probs.argmax(0).astype(np.float32),
                    transform,
                    self.input_size,
                    w,
                    h,
                    nearest=True,
                ).astype(np.int64)
                confidence = _to_image(probs.max(0), transform, self.input_size, w, h)
            class_map = np.where(confidence >= params.confidence, class_map, 0)
            dtype = np.uint8 if probs.shape[0] <= 256 else np.uint16
            class_map = class_map.astype(dtype)
            names = names or [str(i) for i in range(probs.shape[0])]
        return Prediction(SemanticMask(class_map, confidence.astype(np.float32), names), w, h)


def _to_image(
    plane: np.ndarray,
    transform: Transform,
    input_size: tuple[int, int],
    width: int,
    height: int,
    nearest: bool = False,
) -> np.ndarray:
    """A model-resolution plane -> input-image pixels, undoing letterbox padding."""
    ph, pw = plane.shape
    in_w, in_h = input_size
    kx, ky = pw / in_w, ph / in_h
    x0, y0, x1, y1 = transform.content
    crop = plane[
        int(round(y0 * ky)) : int(round(y1 * ky)), int(round(x0 * kx)) : int(round(x1 * kx))
    ]
    if crop.size == 0:
        crop = plane
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=interp)


@family("classifier", options=ClassifierOptions, quantize="tensor")
def load_classifier(
    model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions
) -> Classifier:
    return Classifier(model_id, manifest, folder, options)


@family("semantic", options=SemanticOptions, quantize="tensor")
def load_semantic(
    model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions
) -> SemanticSegmenter:
    return SemanticSegmenter(model_id, manifest, folder, options)
