"""The engine contract: everything a door may ask of an engine, and nothing else.

Two engines implement all of it: `LocalEngine` (sessions in this process) and Ray's
`RayEngine` (the same calls answered by the model replicas, all of them). The HTTP doors,
the metrics, the jobs service and `cvserve predict` are typed against `EngineAPI` only, so
a route that works on one engine works on the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from cvserve.engine.pipeline import Encoder
from cvserve.engine.promptable import Prompt, PromptResult
from cvserve.models.base import InferParams, ModelInfo

T = TypeVar("T")


@dataclass(frozen=True)
class LoadedModel:
    """A model held in memory: by this process, or (Ray) by one or more replicas."""

    model_id: str
    resident_bytes: int  # the process's growth across its load (summed over replicas)
    load_seconds: float  # its latest load
    pinned: bool  # preloaded by the operator: never unloaded to make room
    replicas: int = 1  # how many processes hold it


@dataclass(frozen=True)
class Readiness:
    """The preloads: those still loading, and model -> why its preload failed."""

    loading: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)


class EngineListener(Protocol):
    """What an engine reports as it works (the metrics listen); never fails a call."""

    def inference(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        """One admitted image or prompt; outcome: ok, error, deadline, cancelled,
        overloaded."""

    def loaded(self, model_id: str, seconds: float) -> None:
        """A model was loaded (its sessions built) in `seconds`."""

    def evicted(self, model_id: str) -> None:
        """A model was unloaded to stay within the model budget."""


@runtime_checkable
class EngineAPI(Protocol):
    """The calls every door makes. Errors are `cvserve.errors` domain errors (404 for an
    unknown model, 503 when busy, 504 past the deadline), never transport errors."""

    # -- the model catalogue (the store, read without loading) --------------------------
    def model_info(self, model_id: str) -> ModelInfo:
        """Metadata without loading the model (ModelNotFound if it is not in the store)."""
        ...

    def models(self) -> list[ModelInfo]:
        """Every model in the store, loaded or not."""
        ...

    # -- what is in memory ---------------------------------------------------------------
    async def load(self, model_id: str) -> None:
        """Load the model (within the model budget and the call's deadline)."""
        ...

    async def unload(self, model_id: str) -> bool:
        """Unload the model everywhere it is held; whether anything was unloaded."""
        ...

    async def clear(self) -> None:
        """Unload every model."""
        ...

    async def loaded(self) -> list[LoadedModel]:
        """The models in memory now, sorted by id."""
        ...

    # -- work ----------------------------------------------------------------------------
    async def infer(
        self, model_id: str, source: bytes | np.ndarray, params: InferParams, encoder: Encoder[T]
    ) -> T:
        """One image (encoded bytes, or RGB uint8 pixels) through the model, answered as
        `encoder` makes it (`cvserve.encoders`: the door's wire format)."""
        ...

    async def segment(
        self, model_id: str, key: str, image: Callable[[], bytes], prompt: Prompt
    ) -> PromptResult:
        """A prompt on an image with a promptable (SAM) model. `key` names the image's
        content (its embedding is cached under it); `image()` gives its encoded bytes and
        is called only when needed."""
        ...

    # -- operations ----------------------------------------------------------------------
    def preload(self, model_ids: tuple[str, ...]) -> None:
        """Load these models in the background and pin them (`--preload`)."""
        ...

    def readiness(self) -> Readiness:
        """Where the preloads stand (`/readiness`)."""
        ...

    def activity(self) -> dict[str, tuple[int, int]]:
        """model_id -> (images queued, images running) that this engine admitted."""
        ...

    def subscribe(self, listener: EngineListener) -> None:
        """Report inferences, loads and evictions to `listener` from now on."""
        ...

    def close(self) -> None:
        """Stop taking work and let go of the models (the server is stopping)."""
        ...
