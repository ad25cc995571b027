"""The ingress's engine: the doors' calls forwarded to the model replicas over Ray Serve
handles (multiplexed by model id), with the same errors a local engine raises."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from cvserve.engine import Engine, Prompt, PromptResult, Rendered
from cvserve.errors import CVServeError, DeadlineExceeded, Overloaded
from cvserve.models.base import InferParams, Model
from cvserve.models.store import ModelStore
from cvserve.params import RenderOptions
from cvserve.settings import Settings

T = TypeVar("T")
# A replica that died, restarts, or is saturated: the caller may retry (503), as with a
# full local queue.
_UNAVAILABLE = (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
)


class RemoteEngine(Engine):
    """Model lookup stays local (the store is a directory every node reads); inference and
    prompts run on the replicas. The ingress's own admission counts what it forwards, so its
    metrics and its 503 bound work as in one process."""

    def __init__(
        self, settings: Settings, store: ModelStore, models: DeploymentHandle, replicas: int
    ) -> None:
        super().__init__(settings, store)
        self._models = models
        # What the replicas together may hold in flight, queued ones included.
        self.admission.limit = (settings.max_queue + settings.lanes()) * max(1, replicas)

    async def model(self, model_id: str) -> Model:
        """Loads the model on a replica (`/model/add`); the ingress holds no sessions."""
        self.model_info(model_id)
        await self._call(model_id, "load")
        return _Remote(self, model_id)

    def preload(self, model_ids: tuple[str, ...]) -> None:
        """Nothing here: the ingress holds no sessions, and Serve places models on the
        replicas as requests name them."""

    async def infer(
        self,
        model_id: str,
        source: bytes | np.ndarray,
        params: InferParams,
        render: RenderOptions,
    ) -> Rendered:
        self.model_info(model_id)  # 404 here, before anything travels
        result: Rendered = await self._call(model_id, "infer", source, params, render)
        return result

    async def segment(
        self, model_id: str, key: str, image: Callable[[], bytes], prompt: Prompt
    ) -> PromptResult:
        self.model_info(model_id)
        data = await asyncio.to_thread(image)  # the replica decodes; bytes travel, not pixels
        result: PromptResult = await self._call(model_id, "segment", key, data, prompt)
        return result

    async def _call(self, model_id: str, method: str, *args: Any) -> Any:
        gate = self.admission
        gate.enter(model_id)
        gate.started(model_id)
        started = time.perf_counter()
        outcome = "error"
        timeout = max(0.0, self.time_left())
        handle = self._models.options(multiplexed_model_id=model_id)
        response: DeploymentResponse = getattr(handle, method).remote(*args, timeout)
        try:
            result = await asyncio.wait_for(_await(response), timeout=timeout)
            outcome = "ok"
            return result
        except asyncio.TimeoutError:
            response.cancel()
            outcome = "deadline"
            raise DeadlineExceeded(
                f"inference on {model_id} did not finish within "
                f"{self.settings.request_timeout_s:g} s"
            ) from None
        except RayTaskError as e:
            cause = e.cause
            if isinstance(cause, Overloaded):
                outcome = "overloaded"
            if isinstance(cause, CVServeError):
                raise cause from None
            if isinstance(cause, _UNAVAILABLE):
                raise Overloaded(f"model {model_id} is restarting; retry shortly") from None
            raise
        except _UNAVAILABLE:
            outcome = "overloaded"
            raise Overloaded(f"model {model_id} is busy or restarting; retry shortly") from None
        except (asyncio.CancelledError, RequestCancelledError):
            response.cancel()
            outcome = "cancelled"
            raise
        finally:
            gate.leave(model_id, ran=True)
            gate.notify(model_id, outcome, 0.0, time.perf_counter() - started)


async def _await(response: DeploymentResponse) -> Any:
    return await response


class _Remote(Model):
    """A model that lives on the replicas: the ingress only knows its metadata."""

    def __init__(self, engine: RemoteEngine, model_id: str) -> None:
        self.info = engine.model_info(model_id)

    def predict(self, image: np.ndarray, params: InferParams) -> Any:
        raise RuntimeError("this model runs on a Ray Serve replica; call the engine")
