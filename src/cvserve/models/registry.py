"""One record per model family, in one registry: how it loads, its typed post-processing
options, a keypoint layout its graph fixes, and how `cvserve models quantize` treats it.

A new family is one module that declares its record (`@family(...)` on its loader) plus one
line in `_FAMILY_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cvserve.errors import ModelLoadError
from cvserve.keypoint_sets import KeypointLayout, keypoint_layout
from cvserve.models.base import Model, ModelInfo, Task
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions

Loader = Callable[..., Model]  # (model_id, manifest, folder, options[, parts]) -> Model
# A composite's way to its parts, by model id: the store's loaded ones, so coco-segment
# shares coco-detect's and mobilesam's sessions instead of a copy of its own.
PartResolver = Callable[[str], Model]
# "tensor": one ONNX file run on the family's preprocessed tensor; "encoder": SAM's image
# encoder only; "composite": its parts' int8 variants. None: not quantized.
QuantizeKind = Literal["tensor", "encoder", "composite"]
_Options = TypeVar("_Options", bound="FamilyOptions")


class FamilyOptions(BaseModel):
    """A family's `postprocess` options, typed; keys it does not read are kept, not refused."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @classmethod
    def read(cls: type[_Options], model_id: str, postprocess: Mapping[str, Any]) -> _Options:
        try:
            return cls.model_validate(dict(postprocess))
        except ValidationError as e:
            raise ModelLoadError(f"model {model_id}: invalid postprocess options: {e}") from None


@dataclass(frozen=True)
class Family:
    name: str
    load: Loader
    options: type[FamilyOptions] = FamilyOptions
    keypoints: KeypointLayout | None = None  # None: the manifest's, or by postprocess.kpt_shape
    quantize: QuantizeKind | None = None
    parts: bool = False  # its loader takes a PartResolver (a composite of other models)


_FAMILIES: dict[str, Family] = {}

# Modules that define families; imported on first use so start-up stays cheap.
_FAMILY_MODULES = (
    "cvserve.models.yolo",
    "cvserve.models.generic",
    "cvserve.models.ssd",
    "cvserve.models.retinaface",
    "cvserve.models.movenet",
    "cvserve.models.sam",
    "cvserve.models.composite",
)
_loaded = False


def family(
    name: str,
    *,
    options: type[FamilyOptions] = FamilyOptions,
    keypoints: KeypointLayout | None = None,
    quantize: QuantizeKind | None = None,
    parts: bool = False,
) -> Callable[[Loader], Loader]:
    """Register the decorated loader as family `name`'s, with the rest of its record."""

    def register(loader: Loader) -> Loader:
        _FAMILIES[name] = Family(name, loader, options, keypoints, quantize, parts)
        return loader

    return register


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency inside the module
                raise
    _loaded = True


def known_families() -> list[str]:
    _ensure_loaded()
    return sorted(_FAMILIES)


def family_of(name: str) -> Family | None:
    _ensure_loaded()
    return _FAMILIES.get(name)


def load(
    model_id: str,
    manifest: Manifest,
    folder: Path,
    options: RuntimeOptions,
    parts: PartResolver | None = None,
) -> Model:
    """The model in `folder`. `parts`: where a composite takes its parts from (None: it
    loads copies of its own, from the folders beside it)."""
    record = family_of(manifest.family)
    if record is None:
        raise ModelLoadError(
            f"model {model_id}: unknown family {manifest.family!r}; known: {', '.join(sorted(_FAMILIES))}"
        )
    if record.parts:
        return record.load(model_id, manifest, folder, options, parts)
    return record.load(model_id, manifest, folder, options)


def info_from_manifest(model_id: str, manifest: Manifest) -> ModelInfo:
    """What a model folder's manifest (and its family's record) tell about it, without
    loading any weights."""
    size = manifest.preprocess.size
    names: list[str] = []
    skeleton: list[tuple[int, int]] = []
    if manifest.task is Task.KEYPOINT_DETECTION:
        record = family_of(manifest.family)
        names, skeleton = keypoint_layout(
            record.keypoints if record else None,
            manifest.keypoint_names,
            manifest.skeleton,
            manifest.postprocess,
        )
    return ModelInfo(
        model_id=model_id,
        task=manifest.task,
        class_names=list(manifest.class_names),
        input_size=(int(size[0]), int(size[1])) if size else None,
        family=manifest.family,
        multilabel=manifest.multilabel,
        source=dict(manifest.source),
        keypoint_names=names,
        skeleton=skeleton,
    )
