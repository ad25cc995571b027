"""Promptable models (segment-anything and friends): a costly image embedding computed
once, then cheap prompts against it, as segment-anything's `SamPredictor` separates
`set_image` from `predict`.

Unlike its predictor, the embedding is an immutable value the caller holds (and may
cache, see `embed_cached`), not state inside the model, so one model serves many
threads and images at once.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from cvserve.errors import BadRequest
from cvserve.models.base import InferParams, Model
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.results import Prediction


@dataclass(frozen=True)
class Embedding:
    """One image's encoding, plus the size of the image it encodes (original pixels)."""

    embedding: np.ndarray  # the encoder's output, family-specific shape, never mutated
    height: int
    width: int


E = TypeVar("E", bound=Embedding)


class PromptsRequired(BadRequest):
    """A promptable model was asked to predict from an image alone."""


class EmbeddingCache(Generic[E]):
    """Thread-safe LRU of embeddings; concurrent misses on one key compute it once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._items: OrderedDict[str, E] = OrderedDict()
        self._pending: dict[str, Future[E]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: str, compute: Callable[[], E]) -> E:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return found
            pending = self._pending.get(key)
            if pending is None:
                self.misses += 1
                mine: Future[E] = Future()
                self._pending[key] = mine
        if pending is not None:  # another thread is encoding this image: share its result
            result = pending.result()
            with self._lock:
                self.hits += 1
            return result
        try:
            emb = compute()
        except BaseException as e:
            with self._lock:
                self._pending.pop(key, None)
            mine.set_exception(e)
            raise
        with self._lock:
            self._pending.pop(key, None)
            if self.capacity:
                self._items[key] = emb
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        mine.set_result(emb)
        return emb

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class PromptableModel(Model, Generic[E]):
    """A model that answers prompts (points, a box) about an image, not the image alone.

    It is a `Model` so the store, the model listings and every door handle it like any
    other; its `predict` refuses with `PromptsRequired` (400), since an image alone is no
    question for it. Implementations must be thread-safe, and set `cache`.
    """

    cache: EmbeddingCache[E]

    @abstractmethod
    def embed(self, image: np.ndarray, ctx: RunContext = IN_PROCESS) -> E:
        """Encode one image: the costly step, done once per image.

        Arguments:
          image: uint8 array (H, W, 3), RGB, EXIF-oriented, in original pixels.
          ctx: the call's deadline and scheduling hint, for the encoder's run.

        Returns:
          The image's embedding, with (H, W) as its `height` and `width`.
        """

    @abstractmethod
    def segment(
        self,
        embedding: E,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        ctx: RunContext = IN_PROCESS,
    ) -> tuple[np.ndarray, float]:
        """One mask for the prompts on an embedded image: the cheap step.

        Arguments (every coordinate in the embedded image's original pixels, x right and
        y down, origin at the top-left corner; at least one point or a box):
          embedding: what `embed` returned for the image.
          points: float array (N, 2) of (x, y) prompt points, or None.
          labels: array (N,), one per point: 1 foreground, 0 background; None: all 1.
          box: float array (4,), the box prompt as (x1, y1, x2, y2), or None.
          ctx: the call's deadline and scheduling hint, for the decoder's run.

        Returns:
          (mask, score): a bool array (H, W) at the original image size, and the model's
          predicted IoU of that mask (about 0..1).

        Raises:
          BadRequest: no prompt, or labels that do not match the points.
        """

    def embed_cached(
        self,
        key: str,
        image: np.ndarray | Callable[[], np.ndarray],
        ctx: RunContext = IN_PROCESS,
    ) -> E:
        """`embed`, remembered under a caller-chosen key (e.g. file id + content hash).

        `image` may be a zero-argument callable, so a cache hit skips decoding the file.
        """
        return self.cache.get_or_compute(
            key, lambda: self.embed(image() if callable(image) else image, ctx)
        )

    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        raise PromptsRequired(
            f"model {self.info.model_id} is promptable: it needs points or a box prompt"
        )

    def close(self) -> None:
        self.cache.clear()  # embeddings are large (SAM: 4 MiB each): free them with the model
