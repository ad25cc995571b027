"""LocalEngine: the engine contract (`engine.contract.EngineAPI`) answered in this process.

It owns model lookup and loading (off the request threads, within the model budget of
`residency`, preloads pinned), the per-model admission bound,
each model's lanes, the request deadline with ONNX Runtime cancellation, the event
listeners, and the one decode -> preprocess -> predict -> render path.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from cvserve.engine import pipeline, promptable
from cvserve.engine.admission import Admission
from cvserve.engine.contract import EngineListener, LoadedModel, Readiness
from cvserve.engine.deadline import time_left
from cvserve.engine.lanes import Lanes
from cvserve.engine.pipeline import Encoder
from cvserve.engine.promptable import Prompt, PromptResult
from cvserve.engine.residency import Budget, Residency
from cvserve.errors import BadRequest, DeadlineExceeded, ModelNotFound, Overloaded
from cvserve.images import decode_image
from cvserve.models.base import InferParams, Model, ModelInfo
from cvserve.models.context import RunContext
from cvserve.models.ids import parse_model_id
from cvserve.models.registry import info_from_manifest
from cvserve.models.runtime import new_run_options
from cvserve.models.store import LoadStats, ModelStore
from cvserve.settings import Settings

T = TypeVar("T")
log = logging.getLogger("cvserve.engine")
# How long a load waits for a loaded model to go idle (to make room under the budget)
# before answering 503: requests finish in milliseconds to seconds.
BUSY_WAIT_S = 5.0


class LocalEngine:
    """The models of one process's store, run on its lanes (see the module's docstring)."""

    def __init__(self, settings: Settings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self.admission = Admission(settings.max_queue + settings.lanes())
        self.lanes = Lanes(settings.lanes())
        # Loading runs on its own threads so a slow load never starves inference.
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cvserve-load")
        budget = Budget(settings.max_loaded_models, settings.model_memory_mb * 2**20)
        self.residency = Residency(store, self.admission, budget)
        self._preloads: dict[str, Future[Model]] = {}
        self._listeners: list[EngineListener] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalEngine:
        """Over the settings' model store, with their runtime options."""
        return cls(settings, ModelStore(settings.store_dir, settings.runtime_options()))

    # -- events --------------------------------------------------------------------------
    def subscribe(self, listener: EngineListener) -> None:
        if not self._listeners:  # the first one: hook the parts that report
            self.admission.listeners.append(self._inference)
            self.store.load_listeners.append(self._loaded)
            self.residency.evict_listeners.append(self._evicted)
        self._listeners.append(listener)

    def _inference(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        self._tell(lambda x: x.inference(model_id, outcome, queued_s, run_s))

    def _loaded(self, model_id: str, stats: LoadStats) -> None:
        self._tell(lambda x: x.loaded(model_id, stats.seconds))

    def _evicted(self, model_id: str) -> None:
        self._tell(lambda x: x.evicted(model_id))

    def _tell(self, event: Callable[[EngineListener], None]) -> None:
        for listener in list(self._listeners):
            with contextlib.suppress(Exception):  # a listener never fails the call
                event(listener)

    def activity(self) -> dict[str, tuple[int, int]]:
        return self.admission.snapshot()

    def close(self) -> None:
        self.lanes.close()
        self._loader.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def time_left(self) -> float:
        return time_left(self.settings.request_timeout_s)

    # -- models --------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return self.store.infos()

    def model_info(self, model_id: str) -> ModelInfo:
        """Cheap metadata without loading the model (404 if it is not in the store)."""
        loaded = self.store.loaded(model_id)
        if loaded is not None:
            return loaded.info
        try:
            parse_model_id(model_id)
        except BadRequest:
            raise ModelNotFound(f"model {model_id} not found") from None
        if not self.store.exists(model_id):
            raise ModelNotFound(
                f"model {model_id} not found in the model store; add it with "
                f"`cvserve models import PATH --id {model_id}` or `cvserve models pull NAME`"
            )
        return info_from_manifest(model_id, self.store.manifest(model_id))

    async def model(self, model_id: str) -> Model:
        """The loaded model; a load runs on the loader threads, within the deadline."""
        model = self.store.loaded(model_id)
        if model is not None:
            self.residency.touch(model_id)
            return model
        self.model_info(model_id)  # 404 before any loading
        loop = asyncio.get_running_loop()
        wait_s = max(0.0, min(BUSY_WAIT_S, self.time_left() - 1.0))
        load = functools.partial(self.residency.load, model_id, wait_s=wait_s)
        # Shielded: a request that gives up waiting leaves the load going for the next one.
        future = loop.run_in_executor(self._loader, load)
        try:
            return await asyncio.wait_for(
                asyncio.shield(future), timeout=max(0.0, self.time_left())
            )
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"model {model_id} is still loading after "
                f"{self.settings.request_timeout_s:g} s; retry shortly"
            ) from None

    async def load(self, model_id: str) -> None:
        await self.model(model_id)

    async def unload(self, model_id: str) -> bool:
        return self.unload_now(model_id)

    async def clear(self) -> None:
        for model_id in self.store.loaded_ids():
            self.unload_now(model_id)

    def unload_now(self, model_id: str) -> bool:
        """Unloads it on this thread, pinned or not: the operator (or Serve's model cache,
        on a Ray replica) asked for it by name."""
        return self.residency.unload(model_id)

    async def loaded(self) -> list[LoadedModel]:
        pinned = self.residency.pinned
        out = []
        for model_id in sorted(self.store.loaded_ids()):
            stats = self.store.stats.get(model_id)
            seconds, size = (stats.seconds, stats.resident_bytes) if stats else (0.0, 0)
            out.append(LoadedModel(model_id, size, seconds, model_id in pinned))
        return out

    async def pin(self, model_id: str) -> None:
        """Load the model and keep it loaded whatever the budget (a Ray replica's preload)."""
        load = functools.partial(self.residency.load, model_id, pin=True)
        await asyncio.get_running_loop().run_in_executor(self._loader, load)

    def preload(self, model_ids: tuple[str, ...]) -> None:
        """Load these models in the background (loader threads) and pin them."""
        for model_id in model_ids:
            if model_id not in self._preloads:
                load = functools.partial(self.residency.load, model_id, pin=True)
                future = self._loader.submit(load)
                future.add_done_callback(functools.partial(_log_preload, model_id))
                self._preloads[model_id] = future

    def readiness(self) -> Readiness:
        loading: list[str] = []
        failed: dict[str, str] = {}
        for model_id, future in self._preloads.items():
            if not future.done():
                loading.append(model_id)
            elif future.cancelled():
                failed[model_id] = "cancelled (the server is stopping)"
            elif (error := future.exception()) is not None:
                failed[model_id] = getattr(error, "message", None) or repr(error)
        return Readiness(tuple(loading), failed)

    # -- the doors' calls ----------------------------------------------------------------
    async def infer(
        self, model_id: str, source: bytes | np.ndarray, params: InferParams, encoder: Encoder[T]
    ) -> T:
        """One image through the model, admitted, on its lanes, within the deadline."""
        model = await self.model(model_id)
        return await self.run(
            model_id, pipeline.infer, model, source, params, self.settings, encoder
        )

    def infer_now(
        self, model_id: str, source: bytes | np.ndarray, params: InferParams, encoder: Encoder[T]
    ) -> T:
        """The same path on the caller's thread, for in-process callers with their own
        concurrency (`cvserve predict`): no admission, lanes or deadline. Loads the model
        (within the budget) if it is not loaded."""
        model = self.residency.load(model_id, wait_s=BUSY_WAIT_S)
        return pipeline.infer(model, source, params, self.settings, encoder)

    async def segment(
        self, model_id: str, key: str, image: Callable[[], bytes], prompt: Prompt
    ) -> PromptResult:
        """A prompt on an image, admitted and on the SAM model's lanes like any request.

        `key` names the image's content (its embedding is cached under it); `image` gives
        its encoded bytes, called only when the embedding is not cached."""
        model = promptable.promptable(await self.model(model_id), model_id)
        return await self.run(
            model_id, promptable.segment, model, key, self._decoder(image), prompt
        )

    def _decoder(self, image: Callable[[], bytes]) -> Callable[[], np.ndarray]:
        limits = self.settings

        def decoded() -> np.ndarray:
            return decode_image(
                image(), max_pixels=limits.max_image_pixels, max_side=limits.max_image_side
            )

        return decoded

    async def run(self, model_id: str, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args, ctx) on the model's lanes, admitted by the gate, within the deadline;
        `ctx` (a RunContext) carries the call's cancellation and its "alone" hint down to
        every session run. Past the deadline: 504, and the run is told to stop."""
        gate = self.admission
        gate.enter(model_id)
        options = new_run_options()
        ctx = RunContext(options, gate.alone)
        admitted = time.perf_counter()
        timing = {"queued": 0.0, "run": 0.0}

        def work() -> T:
            begun = time.perf_counter()
            timing["queued"] = begun - admitted
            gate.started(model_id)
            try:
                return fn(*args, ctx)
            finally:
                timing["run"] = time.perf_counter() - begun

        def done(f: Future[T]) -> None:
            ran = not f.cancelled()
            gate.leave(model_id, ran=ran)
            if not ran:
                outcome = "cancelled"
            elif options.terminate:
                outcome = "deadline"
            else:
                outcome = "ok" if f.exception() is None else "error"
            gate.notify(model_id, outcome, timing["queued"], timing["run"])

        try:
            # In the request's context: what the work logs carries its request id.
            job = self.lanes.executor(model_id).submit(contextvars.copy_context().run, work)
        except RuntimeError:  # the lanes are closed: the server is stopping
            gate.leave(model_id)
            raise Overloaded("the server is shutting down; retry shortly") from None
        job.add_done_callback(done)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(job), timeout=max(0.0, self.time_left())
            )
        except asyncio.TimeoutError:
            options.terminate = True  # a queued job is dropped, a running one stops
            job.cancel()
            raise DeadlineExceeded(
                f"inference on {model_id} did not finish within "
                f"{self.settings.request_timeout_s:g} s"
            ) from None
        except asyncio.CancelledError:
            options.terminate = True
            job.cancel()
            raise


def _log_preload(model_id: str, future: Future[Model]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is None:
        log.info("preloaded model %s (pinned)", model_id)
    else:
        log.error("could not preload model %s: %s", model_id, getattr(error, "message", error))
