"""`cvserve.json`: the manifest each model folder in the store carries.

It names the task, the family (which decoder runs), the ONNX files, class names, and the
preprocessing the model was trained with. Importers (Ultralytics metadata, the peer's
layout, user configs) and the zoo all write this one format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cvserve.errors import CVServeError, ModelLoadError
from cvserve.models.base import Task
from cvserve.models.ids import parse_model_id

MANIFEST_NAME = "cvserve.json"
ResizeMode = Literal["letterbox", "stretch", "center-crop", "fit", "none"]


class Preprocess(BaseModel):
    """How an RGB image becomes the model's input tensor.

    value = (pixel * scale - mean) / std, per channel in `color` order.
    """

    model_config = ConfigDict(extra="forbid")

    resize: ResizeMode = "letterbox"
    size: tuple[int, int] | None = None  # (width, height); None: from the ONNX input shape
    pad_value: int = 114
    # Letterbox placement: "center" (Ultralytics, peer) or "top-left".
    pad_align: Literal["center", "top-left"] = "center"
    color: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    dtype: Literal["float32", "uint8", "float16", "int32"] = "float32"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: Literal["linear", "area", "nearest", "pil-bilinear"] = "linear"
    # Opt-in shortcut for every request to this model: JPEGs decode DCT-scaled (1/2..1/8)
    # when the model's input is that much smaller (see cvserve.engine.fastpath). Off: exact pixels.
    fast_decode: bool = False


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = 1
    task: Task
    family: str
    weights: str = "model.onnx"
    files: dict[str, str] = Field(default_factory=dict)  # extra ONNX files by role
    class_names: list[str] = Field(default_factory=list)
    multilabel: bool = False
    preprocess: Preprocess = Field(default_factory=Preprocess)
    postprocess: dict[str, Any] = Field(default_factory=dict)  # family-specific options
    keypoint_names: list[str] = Field(default_factory=list)
    skeleton: list[tuple[int, int]] = Field(default_factory=list)
    source: dict[str, Any] = Field(default_factory=dict)  # package, version, licence, notes
    # Runtime for this model's ONNX files (cvserve.models.backends); None: the server's
    # `runtime` / `runtime_precision` settings. bf16 is opt-in and not exact (OpenVINO).
    runtime: Literal["auto", "onnxruntime", "openvino"] | None = None
    runtime_precision: Literal["f32", "bf16"] | None = None

    def runtime_overrides(self) -> dict[str, Any]:
        """The RuntimeOptions fields this manifest sets (`runtime`, `precision`)."""
        changes: dict[str, Any] = {}
        if self.runtime is not None:
            changes["runtime"] = self.runtime
        if self.runtime_precision is not None:
            changes["precision"] = self.runtime_precision
        return changes

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_NAME
        try:
            manifest = cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError as e:
            raise ModelLoadError(f"{folder} has no {MANIFEST_NAME}") from e
        except (ValidationError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"invalid {path}: {e}") from e
        if manifest.family == "composite":
            # The store's layout is root/dataset/version: the parts live beside this folder.
            manifest.source = composite_source(manifest, folder.parent.parent)
        return manifest

    def write(self, folder: Path) -> None:
        data = self.model_dump(mode="json", exclude_defaults=False)
        for key in ("runtime", "runtime_precision"):  # unset: left out, as before them
            if data.get(key) is None:
                data.pop(key, None)
        (folder / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n")


COMPOSITE_ROLES = ("detector", "segmenter")


def part_ids(manifest: Manifest) -> list[str]:
    """The model ids a composite manifest is made of, in its postprocess order."""
    return [str(manifest.postprocess[r]) for r in COMPOSITE_ROLES if r in manifest.postprocess]


def compose_licence(parts: dict[str, dict[str, Any]]) -> str:
    """One line naming each part's licence: `coco-detect/1: Apache-2.0 | mobilesam/1: ...`."""
    return " | ".join(f"{mid}: {src.get('licence') or 'unknown'}" for mid, src in parts.items())


def composite_source(manifest: Manifest, root: Path) -> dict[str, Any]:
    """A composite's `source` with each part's package, version and licence as the store
    has them now (`parts`, by model id) and `licence` naming them all.

    Read from the parts' own manifests (raw JSON: a part is never expanded in turn), so a
    composite pulled before its licences were recorded, or a part pulled again, shows the
    licences themselves; a part missing from the store keeps what was recorded at pull time.
    """
    source = dict(manifest.source)
    recorded = source.get("parts")
    recorded = recorded if isinstance(recorded, dict) else {}
    parts: dict[str, dict[str, Any]] = {}
    for mid in part_ids(manifest):
        part: dict[str, Any] = dict(recorded.get(mid) or {})
        try:
            dataset, version = parse_model_id(mid)
            raw = json.loads((root / dataset / version / MANIFEST_NAME).read_text())
            if isinstance(raw.get("source"), dict):
                part = dict(raw["source"])
        except (CVServeError, OSError, ValueError, AttributeError):
            pass  # not in the store (or unreadable): what the pull recorded, if anything
        parts[mid] = part
    if parts:
        source["parts"] = parts
        source["licence"] = compose_licence(parts)
    return source
