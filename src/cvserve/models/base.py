"""What every model is: a task, class names, and `predict(image, params) -> Prediction`.

Models never know about HTTP. Images arrive as RGB uint8 arrays (H, W, 3), already
EXIF-oriented; results come back in those pixels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.results import Prediction
from cvserve.tasks import InferParams, Task

__all__ = ["InferParams", "Model", "ModelInfo", "Task"]


@dataclass
class ModelInfo:
    """What `models list`, `/model/registry` and the web page show about a model."""

    model_id: str
    task: Task
    class_names: list[str]
    input_size: tuple[int, int] | None  # (width, height)
    family: str
    multilabel: bool = False
    source: dict[str, Any] | None = None  # package, version, licence, file
    keypoint_names: list[str] = field(default_factory=list)
    skeleton: list[tuple[int, int]] = field(default_factory=list)  # keypoint index pairs

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "task_type": self.task.value,
            "family": self.family,
            "classes": self.class_names,
            "input_size": list(self.input_size) if self.input_size else None,
            "multilabel": self.multilabel,
            "source": self.source or {},
            "keypoint_names": list(self.keypoint_names),
            "skeleton": [[a, b] for a, b in self.skeleton],
        }


class Model(ABC):
    """A loaded model. Implementations must be thread-safe: `predict` runs on worker threads."""

    info: ModelInfo

    @property
    def task(self) -> Task:
        return self.info.task

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    @abstractmethod
    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        """Run the model on one RGB uint8 image (H, W, 3); `ctx`: the call's deadline and
        scheduling hint, handed to every session run."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions; called when the model is unloaded."""
