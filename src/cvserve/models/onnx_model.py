"""Shared plumbing for single-ONNX-file models: session pool, input size, preprocessing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from cvserve.errors import ModelLoadError
from cvserve.models.base import Model
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.manifest import Manifest
from cvserve.models.preprocess import Transform, prepare_tensor
from cvserve.models.registry import info_from_manifest
from cvserve.models.runtime import RuntimeOptions, SessionPool


class OnnxModel(Model):
    def __init__(
        self, model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions
    ) -> None:
        self.manifest = manifest
        self.pool = SessionPool(
            folder / manifest.weights, replace(options, **manifest.runtime_overrides())
        )
        self.input_size = self._resolve_input_size()
        if manifest.preprocess.size is None:
            manifest = manifest.model_copy(
                update={
                    "preprocess": manifest.preprocess.model_copy(update={"size": self.input_size})
                }
            )
            self.manifest = manifest
        self.info = info_from_manifest(model_id, manifest)
        self._input_name = self.pool.input_names[0]
        self._input_dtype = self.pool.input_dtype(0)

    def _resolve_input_size(self) -> tuple[int, int]:
        spec = self.manifest.preprocess
        if spec.size is not None:
            return int(spec.size[0]), int(spec.size[1])
        shape = self.pool.inputs[0].shape
        dims = shape[2:4] if spec.layout == "nchw" else shape[1:3]
        if len(dims) == 2 and all(isinstance(d, int) and d > 0 for d in dims):
            return int(dims[1]), int(dims[0])
        if spec.resize == "none":
            return (0, 0)
        raise ModelLoadError(
            f"{self.pool.path.name}: input size is dynamic; set preprocess.size in the config"
        )

    def preprocess(
        self, image: np.ndarray, ctx: RunContext = IN_PROCESS
    ) -> tuple[np.ndarray, Transform]:
        w, h = self.input_size
        spec = self.manifest.preprocess
        return prepare_tensor(image, spec, w, h, self._input_dtype, split=ctx.alone())

    def run(self, tensor: np.ndarray, ctx: RunContext = IN_PROCESS) -> list[np.ndarray]:
        return self.pool.run({self._input_name: tensor}, ctx)
