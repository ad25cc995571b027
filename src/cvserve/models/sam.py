"""Segment-anything family (MobileSAM and friends): a heavy image encoder, a light prompt decoder.

The ONNX pair follows segment-anything's standard export:
- encoder: first input float32 [1, 3, 1024, 1024]: RGB resized so the longest side is 1024
  (ResizeLongestSide, bilinear), normalised with ImageNet mean/std on 0..255 pixels and
  zero-padded bottom/right; output [1, 256, 64, 64] image embeddings.
- decoder: `image_embeddings`, `point_coords` [1, N, 2] and `point_labels` [1, N] in the
  1024-resized frame (labels 1 fg, 0 bg, 2/3 box corners, -1 padding point when no box),
  `mask_input` [1, 1, 256, 256], `has_mask_input` [1], `orig_im_size` [2] (h, w); outputs
  `masks` (logits at the original size), `iou_predictions`, `low_res_masks`.

A `PromptableModel`: like segment-anything's `SamPredictor`, the costly embedding is
computed once per image and kept in an LRU cache keyed by the caller (file id + content
hash), so every further prompt on the same image only runs the decoder.

The exported decoder takes one prompt set per run (batch 1), and its cost is the
transformer over the 4096 image tokens, per prompt: the graph relaxed to batch 4 ran
slower than four batch-1 runs (and not bit-identical); the prompt-independent part is ~12 % of a
run. So `segment_boxes` (the composite's many boxes) runs one decoder per box, spread over
the decoder's single-threaded lanes while the request is alone: the same sessions' arithmetic
(the runtime's results do not depend on the thread count), so the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from cvserve.errors import BadRequest, ModelLoadError
from cvserve.models import registry
from cvserve.models.base import ModelInfo, Task
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.manifest import Manifest
from cvserve.models.preprocess import _pil_bilinear as pil_bilinear
from cvserve.models.promptable import Embedding, EmbeddingCache, PromptableModel
from cvserve.models.runtime import RuntimeOptions, SessionPool, helper_threads
from cvserve.results import BoxMask

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
DEFAULT_INPUT = 1024
DEFAULT_CACHE = 8  # embeddings are 4 MiB each (256 x 64 x 64 float32)

_DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)


@dataclass(frozen=True)
class SamEmbedding(Embedding):
    """The encoder's output for one image (`embedding` float32 [1, 256, 64, 64]), with the
    geometry needed to map prompts into it."""

    resized_height: int  # the image's size inside the encoder's square input
    resized_width: int


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """segment-anything's ResizeLongestSide.get_preprocess_shape (rounds half up)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def encoder_input(
    image: np.ndarray, size: int = DEFAULT_INPUT, split: bool = True
) -> tuple[np.ndarray, int, int]:
    """RGB uint8 (H, W, 3) -> ([1, 3, size, size] float32, resized h, resized w)."""
    h, w = image.shape[:2]
    nh, nw = resized_shape(h, w, size)
    # PIL's bilinear (antialiased when shrinking) is what the reference transform uses.
    # (split over two cores while the request is alone: the same bytes, see pil_bilinear)
    resized = image if (nh, nw) == (h, w) else pil_bilinear(image, nw, nh, (0, nw), split)
    x = np.zeros((1, 3, size, size), np.float32)
    # zero padding after normalising, as SAM does; per channel, in place: the same float32
    # operations as (resized - mean) / std on the whole array, without its temporaries.
    for c in range(3):
        out = x[0, c, :nh, :nw]
        np.subtract(resized[:, :, c], PIXEL_MEAN[c], out=out, dtype=np.float32)
        np.divide(out, PIXEL_STD[c], out=out)
    return x, nh, nw


def prompt_arrays(
    emb: SamEmbedding,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts in image pixels -> decoder `point_coords` [1, N, 2] and `point_labels` [1, N]."""
    has_points = points is not None and len(points) > 0
    if not has_points and box is None:
        raise BadRequest("SAM needs at least one point or a box prompt")
    coords: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    if has_points:
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        lab = np.ones(len(pts), np.float32) if labels is None else np.asarray(labels, np.float32)
        if lab.shape != (len(pts),):
            raise BadRequest("SAM prompt: one label per point")
        coords.append(pts)
        labs.append(lab.reshape(-1))
    if box is not None:
        b = np.asarray(box, np.float32).reshape(2, 2)
        coords.append(b)
        labs.append(np.array([2, 3], np.float32))
    else:
        # The export expects a padding point when there is no box.
        coords.append(np.zeros((1, 2), np.float32))
        labs.append(np.array([-1], np.float32))
    xy = np.concatenate(coords).astype(np.float32)
    xy[:, 0] *= emb.resized_width / emb.width
    xy[:, 1] *= emb.resized_height / emb.height
    return xy[None], np.concatenate(labs)[None]


def crop_box(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The outward-rounded box, clipped to the image: (x0, y0, x1, y1), x1 >= x0, y1 >= y0."""
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    return x0, y0, max(x0, x1), max(y0, y1)


class SamModel(PromptableModel[SamEmbedding]):
    def __init__(
        self,
        info: ModelInfo,
        encoder: SessionPool,
        decoder: SessionPool,
        cache_size: int = DEFAULT_CACHE,
        decoder_lanes: int = 1,
    ) -> None:
        self.info = info
        self.decoder_lanes = max(1, decoder_lanes)
        self.encoder = encoder
        self.decoder = decoder
        shape = encoder.inputs[0].shape
        side = shape[-1] if len(shape) == 4 else None
        self.input_size = side if isinstance(side, int) and side > 0 else DEFAULT_INPUT
        self._encoder_input = encoder.input_names[0]
        missing = [n for n in _DECODER_INPUTS if n not in decoder.input_names]
        if missing:
            raise ModelLoadError(f"{info.model_id}: SAM decoder lacks inputs {missing}")
        self._decoder_dtypes = {
            inp.name: decoder.input_dtype(i) for i, inp in enumerate(decoder.inputs)
        }
        outs = decoder.output_names
        self._mask_out = outs.index("masks") if "masks" in outs else 0
        self._iou_out = outs.index("iou_predictions") if "iou_predictions" in outs else 1
        self.cache = EmbeddingCache(cache_size)

    # -- encoder ------------------------------------------------------------------------
    def embed(self, image: np.ndarray, ctx: RunContext = IN_PROCESS) -> SamEmbedding:
        """See `PromptableModel.embed`: RGB uint8 (H, W, 3) -> the encoder's output for it.
        The costly step (MobileSAM: ~0.7 s on CPU)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise BadRequest("SAM needs an RGB image")
        x, nh, nw = encoder_input(image, self.input_size, ctx.alone())
        (emb,) = self.encoder.run({self._encoder_input: x}, ctx)[:1]
        h, w = image.shape[:2]
        return SamEmbedding(np.ascontiguousarray(emb, np.float32), h, w, nh, nw)

    # -- decoder ------------------------------------------------------------------------
    def segment(
        self,
        embedding: SamEmbedding,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        ctx: RunContext = IN_PROCESS,
    ) -> tuple[np.ndarray, float]:
        """See `PromptableModel.segment`: points (N, 2) and box (4,) xyxy in image pixels
        -> (bool mask (H, W) at the original image size, predicted IoU score)."""
        coords, labs = prompt_arrays(embedding, points, labels, box)
        outputs = self.decoder.run(self._feeds(embedding, coords, labs), ctx)
        logits, score = self._best(embedding, outputs)
        return self._full_size(embedding, logits) > 0, score

    def segment_boxes(
        self, embedding: SamEmbedding, boxes: np.ndarray, ctx: RunContext = IN_PROCESS
    ) -> list[tuple[BoxMask, float]]:
        """One box prompt each: the mask inside each (outward-rounded, clipped) box and its
        score, exactly `box_mask(segment(embedding, box=b))` for every box b.

        While the request is alone in flight and the decoder has several lanes, the boxes
        are shared out over them (this thread and the helper threads, one single-threaded
        session each); otherwise they run one after the other as `segment` does."""
        boxes = np.asarray(boxes).reshape(-1, 4)
        options = ctx.options

        def one(
            box: np.ndarray, run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
        ) -> tuple[BoxMask, float]:
            coords, labs = prompt_arrays(embedding, None, None, box)
            logits, score = self._best(embedding, run(self._feeds(embedding, coords, labs)))
            h, w = embedding.height, embedding.width
            x0, y0, x1, y1 = crop_box(box, h, w)
            if logits.shape == (h, w):  # threshold only inside the box: the same pixels
                inside = logits[y0:y1, x0:x1] > 0
            else:
                inside = self._full_size(embedding, logits)[y0:y1, x0:x1] > 0
            return BoxMask(x0, y0, np.ascontiguousarray(inside)), score

        workers = min(len(boxes), self.decoder_lanes)
        if workers < 2 or not ctx.alone():
            return [one(b, lambda f: self.decoder.run(f, ctx)) for b in boxes]

        def share(k: int) -> list[tuple[BoxMask, float]]:
            with self.decoder.session() as s:
                return [
                    one(b, lambda f: s.run(None, f, run_options=options)) for b in boxes[k::workers]
                ]

        others = [helper_threads().submit(share, k) for k in range(1, workers)]
        mine = share(0)
        shares = [mine, *(f.result() for f in others)]
        out: list[tuple[BoxMask, float]] = []
        for i in range(len(boxes)):
            out.append(shares[i % workers][i // workers])
        return out

    def _feeds(
        self, embedding: SamEmbedding, coords: np.ndarray, labs: np.ndarray
    ) -> dict[str, np.ndarray]:
        feeds = {
            "image_embeddings": embedding.embedding,
            "point_coords": coords,
            "point_labels": labs,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros((1,), np.float32),
            "orig_im_size": np.array([embedding.height, embedding.width], np.float32),
        }
        return {
            k: v.astype(self._decoder_dtypes.get(k, np.float32), copy=False)
            for k, v in feeds.items()
        }

    def _best(self, embedding: SamEmbedding, outputs: list[np.ndarray]) -> tuple[np.ndarray, float]:
        """The decoder's outputs -> (the best mask's logits as exported, its score)."""
        masks = np.asarray(outputs[self._mask_out])
        ious = np.asarray(outputs[self._iou_out], np.float32).reshape(-1)
        best = int(np.argmax(ious)) if ious.size > 1 else 0  # multimask exports: the best one
        logits = masks.reshape(-1, *masks.shape[-2:])[best]
        score = float(ious[best]) if ious.size else 0.0
        return logits, score

    @staticmethod
    def _full_size(embedding: SamEmbedding, logits: np.ndarray) -> np.ndarray:
        if logits.shape != (embedding.height, embedding.width):
            logits = cv2.resize(
                logits.astype(np.float32),
                (embedding.width, embedding.height),
                interpolation=cv2.INTER_LINEAR,
            )
        return logits


class SamOptions(registry.FamilyOptions):
    embedding_cache: int = DEFAULT_CACHE  # image embeddings kept for follow-up prompts


@registry.family("sam", options=SamOptions, quantize="encoder")
def load_sam(model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions) -> SamModel:
    enc_name = manifest.files.get("encoder", "encoder.onnx")
    dec_name = manifest.files.get("decoder", "decoder.onnx")
    for name in (enc_name, dec_name):
        if not (folder / name).is_file():
            raise ModelLoadError(f"model {model_id}: missing {name}")
    # Encoding is one big image at a time; decoding is tiny: one session of each suffices.
    threads = max(1, options.lanes * options.threads_per_lane)
    # The manifest's runtime for both; bf16 (opt-in) for the encoder only: the decoder is
    # tiny, and its prompt coordinates would lose pixels in bf16.
    chosen = replace(options, **manifest.runtime_overrides())
    encoder = SessionPool(
        folder / enc_name, replace(chosen, lanes=1, threads_per_lane=threads, wide_threads=0)
    )
    decoder = SessionPool(folder / dec_name, replace(chosen, precision="f32"))
    info = registry.info_from_manifest(model_id, manifest)
    if info.input_size is None:
        info.input_size = (DEFAULT_INPUT, DEFAULT_INPUT)
    cache = SamOptions.read(model_id, manifest.postprocess).embedding_cache
    if info.task is not Task.PROMPTABLE_SEGMENTATION:
        raise ModelLoadError(
            f"model {model_id}: family sam needs task {Task.PROMPTABLE_SEGMENTATION.value}"
        )
    return SamModel(info, encoder, decoder, cache_size=cache, decoder_lanes=options.lanes)
