"""Turn what users have into store folders: Ultralytics ONNX exports (metadata only), the
peer's local layout (weights.onnx + environment.json ...), or any ONNX plus a config."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import onnxruntime as ort

from cvserve.errors import BadRequest, ModelLoadError
from cvserve.models import registry
from cvserve.models.base import ModelInfo, Task
from cvserve.models.manifest import (
    MANIFEST_NAME,
    Manifest,
    Preprocess,
    ResizeMode,
)
from cvserve.models.store import ModelStore

_ULTRALYTICS_TASKS = {
    "detect": Task.OBJECT_DETECTION,
    "segment": Task.INSTANCE_SEGMENTATION,
    "pose": Task.KEYPOINT_DETECTION,
    "classify": Task.CLASSIFICATION,
}
_PEER_TASKS = {t.value: t for t in Task}
_PEER_RESIZE: dict[str, tuple[ResizeMode, int]] = {
    "Stretch to": ("stretch", 114),
    "Fit (black edges) in": ("letterbox", 0),
    "Fit (white edges) in": ("letterbox", 255),
    "Fit (grey edges) in": ("letterbox", 114),
    "Fit (reflect edges) in": ("letterbox", 0),
}


def onnx_metadata(path: Path) -> dict[str, str]:
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise BadRequest(f"{path.name} is not a loadable ONNX model: {e}") from e
    return dict(sess.get_modelmeta().custom_metadata_map)


def _literal(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return default


def ultralytics_manifest(meta: dict[str, str], weights: str = "model.onnx") -> Manifest:
    task = _ULTRALYTICS_TASKS.get(meta.get("task", ""))
    if task is None:
        raise BadRequest(
            f"Ultralytics task {meta.get('task')!r} is not supported (detect, segment, pose, classify)"
        )
    names = _literal(meta.get("names"), {})
    class_names = [str(names[k]) for k in sorted(names)] if isinstance(names, dict) else list(names)
    imgsz = _literal(meta.get("imgsz"), [640, 640])
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    size = (int(imgsz[1]), int(imgsz[0]))  # metadata is (h, w)
    source = {
        "format": "ultralytics-onnx",
        "description": meta.get("description", ""),
        "version": meta.get("version", ""),
        "licence": meta.get("license", ""),
    }
    if task is Task.CLASSIFICATION:
        return Manifest(
            task=task,
            family="classifier",
            weights=weights,
            class_names=class_names,
            preprocess=Preprocess(resize="center-crop", size=size, interpolation="pil-bilinear"),
            postprocess={"activation": "auto"},
            source=source,
        )
    args = _literal(meta.get("args"), {}) or {}
    end2end = str(meta.get("end2end", "False")) == "True" or bool(args.get("nms"))
    post: dict[str, Any] = {"format": "end2end" if end2end else "v8"}
    if task is Task.KEYPOINT_DETECTION:
        post["kpt_shape"] = list(_literal(meta.get("kpt_shape"), [17, 3]))
    return Manifest(
        task=task,
        family="yolo",
        weights=weights,
        class_names=class_names,
        preprocess=Preprocess(resize="letterbox", size=size, pad_value=114),
        postprocess=post,
        source=source,
    )


def _peer_manifest(folder: Path) -> Manifest:
    env = json.loads((folder / "environment.json").read_text())
    pre = env.get("PREPROCESSING", {})
    if isinstance(pre, str):
        pre = json.loads(pre)
    resize = pre.get("resize", {}) if isinstance(pre, dict) else {}
    mode, pad = _PEER_RESIZE.get(resize.get("format", "Stretch to"), ("stretch", 114))
    size = None
    if resize.get("width") and resize.get("height"):
        size = (int(resize["width"]), int(resize["height"]))
    class_map = env.get("CLASS_MAP") or {}
    if class_map:
        class_names = [str(class_map[k]).strip() for k in sorted(class_map, key=lambda k: int(k))]
    elif (folder / "class_names.txt").is_file():
        class_names = [
            ln.strip() for ln in (folder / "class_names.txt").read_text().splitlines() if ln.strip()
        ]
    else:
        class_names = []
    model_type: dict[str, Any] = {}
    if (folder / "model_type.json").is_file():
        model_type = json.loads((folder / "model_type.json").read_text())
    task = _PEER_TASKS.get(model_type.get("project_task_type", "object-detection"))
    if task is None:
        raise BadRequest(f"unsupported project_task_type {model_type.get('project_task_type')!r}")
    arch = str(model_type.get("model_type", ""))
    source = {"format": "peer-layout", "model_type": arch}
    keypoint_names: list[str] = []
    skeleton: list[tuple[int, int]] = []
    if (folder / "keypoints_metadata.json").is_file():
        meta = json.loads((folder / "keypoints_metadata.json").read_text())
        first = meta[0] if isinstance(meta, list) and meta else {}
        kps = first.get("keypoints", {})
        keypoint_names = [str(kps[k]) for k in sorted(kps, key=lambda k: int(k))]
        skeleton = [(int(e["from"]), int(e["to"])) for e in first.get("edges", [])]
    if task is Task.CLASSIFICATION:
        return Manifest(
            task=task,
            family="classifier",
            weights="weights.onnx",
            class_names=class_names,
            multilabel=bool(env.get("MULTICLASS", False)),
            preprocess=Preprocess(
                resize=mode, size=size, pad_value=pad, mean=(0.5,) * 3, std=(0.5,) * 3
            ),
            source=source,
        )
    if task is Task.SEMANTIC_SEGMENTATION:
        return Manifest(
            task=task,
            family="semantic",
            weights="weights.onnx",
            class_names=class_names,
            preprocess=Preprocess(resize=mode, size=size, pad_value=pad),
            postprocess={"kind": "auto"},
            source=source,
        )
    post: dict[str, Any] = {
        "format": "v5" if arch.startswith("yolov5") and "u" not in arch else "v8"
    }
    if task is Task.KEYPOINT_DETECTION:
        post["kpt_shape"] = [len(keypoint_names), 3]
    return Manifest(
        task=task,
        family="yolo",
        weights="weights.onnx",
        class_names=class_names,
        preprocess=Preprocess(resize=mode, size=size, pad_value=pad),
        postprocess=post,
        keypoint_names=keypoint_names,
        skeleton=skeleton,
        source=source,
    )


def import_model(
    path: Path, model_id: str, store: ModelStore, config: Path | None = None, replace: bool = False
) -> ModelInfo:
    """Copy a model into the store as `model_id`. Fails cleanly, leaving nothing behind."""
    path = path.expanduser()
    if not path.exists():
        raise BadRequest(f"{path} does not exist")
    staged = store.staging_dir()
    try:
        manifest = _stage(path, staged, config)
        manifest.write(staged)
        info = registry.info_from_manifest(model_id, manifest)
        # Prove it loads before it lands in the store.
        registry.load(model_id, manifest, staged, store.options).close()
        store.install(model_id, staged, replace=replace)
        return info
    except ModelLoadError as e:
        raise BadRequest(str(e)) from e
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def _stage(path: Path, staged: Path, config: Path | None) -> Manifest:
    if config is not None:
        manifest = Manifest.model_validate(json.loads(config.read_text()))
        src = path if path.is_file() else path / manifest.weights
        shutil.copy2(src, staged / manifest.weights)
        for f in manifest.files.values():
            shutil.copy2((path.parent if path.is_file() else path) / f, staged / f)
        return manifest
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            shutil.copytree(path, staged, dirs_exist_ok=True)
            return Manifest.read(staged)
        if (path / "weights.onnx").is_file() and (path / "environment.json").is_file():
            manifest = _peer_manifest(path)
            for name in (
                "weights.onnx",
                "environment.json",
                "class_names.txt",
                "model_type.json",
                "keypoints_metadata.json",
            ):
                if (path / name).is_file():
                    shutil.copy2(path / name, staged / name)
            return manifest
        onnx_files = sorted(path.glob("*.onnx"))
        if len(onnx_files) == 1:
            path = onnx_files[0]
        else:
            raise BadRequest(
                f"{path}: expected cvserve.json, the weights.onnx + environment.json layout, "
                "or a single .onnx file"
            )
    if path.suffix.lower() != ".onnx":
        raise BadRequest(f"{path.name}: expected an .onnx file")
    meta = onnx_metadata(path)
    if "task" not in meta or "names" not in meta:
        raise BadRequest(
            f"{path.name} has no Ultralytics metadata (task, names); import it with --config "
            "naming its task, classes and pre/post-processing"
        )
    shutil.copy2(path, staged / "model.onnx")
    return ultralytics_manifest(meta)
