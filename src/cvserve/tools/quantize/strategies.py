"""The three kinds of model quantized: a single-file model, a SAM encoder, a composite."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvserve.errors import BadRequest
from cvserve.models import registry
from cvserve.models.base import Model
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.tools.quantize import graph  # by module: a test substitutes quantize_file
from cvserve.tools.quantize.agreement import compare, composite_agreement, sam_agreement
from cvserve.tools.quantize.calibrate import calibration_tensors
from cvserve.tools.quantize.proof import prove_loads, speed
from cvserve.tools.quantize.report import (
    QuantizeRefused,
    QuantizeReport,
    forced_note,
    free_int8_id,
    gate,
    int8_id,
)

_SAM_OPS = ["MatMul", "Gemm"]  # dynamic ConvInteger is slower than float convolutions


def _load_staged(store: ModelStore, model_id: str, manifest: Manifest, folder: Path) -> Model:
    """A staged folder's model, loaded as the store would (a composite's parts: the store's)."""
    return registry.load(model_id, manifest, folder, store.options, parts=store.get)


def _install(
    store: ModelStore,
    out_id: str,
    staged: Path,
    manifest_data: dict[str, Any],
    report: QuantizeReport,
    *,
    force: bool,
    replace: bool,
) -> None:
    """Gate the report, then install the staged folder with its manifest (`source` saying
    how it was made, and that it was forced, if it was)."""
    gate(report, force)
    source = manifest_data["source"]
    if report.below_floor:
        source["quantization"] += forced_note(report)
    Manifest.model_validate(manifest_data).write(staged)
    store.install(out_id, staged, replace=replace)


def _quantize_one_file(
    store: ModelStore,
    model_id: str,
    out_id: str,
    name: str,
    input_name: str,
    tensors: list[np.ndarray],
    photos: list[np.ndarray],
    agree: Callable[[Model], dict[str, float]],
    *,
    method: str,
    what: str,
    repeats: int,
    force: bool,
    replace: bool,
    op_types: list[str] | None = None,
    keep_head_float: bool = True,
) -> QuantizeReport:
    """The model's file `name` quantized into a staged copy of its folder, proved to load,
    judged by `agree` and timed, then installed as `out_id` (`what`: said in its manifest)."""
    manifest = store.manifest(model_id)
    folder = store.folder(model_id)
    staged = store.staging_dir()
    try:
        for f in folder.iterdir():
            if f.is_file() and f.name != name:
                shutil.copy2(f, staged / f.name)
        graph.quantize_file(
            folder / name,
            staged / name,
            method,
            input_name,
            tensors,
            op_types=op_types,
            keep_head_float=keep_head_float,
        )
        try:
            prove_loads(staged / name, {input_name: tensors[0]})
        except QuantizeRefused as e:
            raise QuantizeRefused(f"{out_id} not installed: {e.message}") from e
        source = dict(manifest.source)
        source["quantized_from"] = model_id
        source["quantization"] = f"int8 {method}{what}" + (
            f", calibrated on {len(photos)} photos" if method == "static" else ""
        )
        quant = _load_staged(store, out_id, manifest, staged)
        try:
            agreement = agree(quant)
        finally:
            quant.close()
        float_ms, int8_ms = speed(folder / name, staged / name, input_name, tensors[0], repeats)
        report = QuantizeReport(
            source_id=model_id,
            model_id=out_id,
            method=method,
            photos=len(photos),
            float_ms=float_ms,
            int8_ms=int8_ms,
            float_mb=(folder / name).stat().st_size / 2**20,
            int8_mb=(staged / name).stat().st_size / 2**20,
            agreement=agreement,
        )
        data = {**manifest.model_dump(), "source": source}
        _install(store, out_id, staged, data, report, force=force, replace=replace)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return report


def quantize_model(
    store: ModelStore,
    model_id: str,
    photos: list[np.ndarray],
    *,
    method: str | None = None,
    replace: bool = False,
    repeats: int = 10,
    force: bool = False,
) -> QuantizeReport:
    """method None: static, dynamic for SAM and composites. The int8 model is installed only
    once it loads and runs in a process of its own and agrees with the float model (see
    AGREEMENT_FLOORS; `force`: also below them); otherwise QuantizeRefused, nothing installed."""
    if method not in (None, "static", "dynamic"):
        raise BadRequest("method must be static or dynamic")
    if not photos:
        raise BadRequest("quantizing needs at least one photo")
    manifest = store.manifest(model_id)
    record = registry.family_of(manifest.family)
    kind = record.quantize if record is not None else None
    if kind == "encoder":
        return quantize_sam(
            store, model_id, photos, method or "dynamic", replace, repeats, force=force
        )
    if kind == "composite":
        return quantize_composite(
            store, model_id, photos, method or "dynamic", replace, repeats, force=force
        )
    if kind is None:
        raise BadRequest(f"{model_id}: family {manifest.family} cannot be quantized")
    method = method or "static"
    if manifest.files:
        raise BadRequest(f"{model_id}: multi-file models ({manifest.family}) are not supported")
    out_id = free_int8_id(store, model_id, replace)
    model = store.get(model_id)
    preprocess = getattr(model, "preprocess", None)
    if preprocess is None:
        raise BadRequest(f"{model_id}: family {manifest.family} has no tensor preprocessing")
    tensors = calibration_tensors(model_id, preprocess, photos)
    # A family with tensor preprocessing is a single-file ONNX model, which has a pool.
    input_name = model.pool.input_names[0]  # type: ignore[attr-defined]  # see above
    return _quantize_one_file(
        store, model_id, out_id, manifest.weights, input_name, tensors, photos,
        lambda quant: compare(model, quant, photos),
        method=method, what="", repeats=repeats, force=force, replace=replace,
    )  # fmt: skip


def quantize_sam(
    store: ModelStore,
    model_id: str,
    photos: list[np.ndarray],
    method: str = "dynamic",
    replace: bool = False,
    repeats: int = 3,
    *,
    force: bool = False,
) -> QuantizeReport:
    """`DATASET/VERSION-int8` of a SAM model: its encoder in int8, its decoder as it is."""
    from cvserve.models.sam import SamModel, encoder_input

    manifest = store.manifest(model_id)
    out_id = free_int8_id(store, model_id, replace)
    model = store.get(model_id)
    if not isinstance(model, SamModel):
        raise BadRequest(f"{model_id}: not a SAM model")
    enc_name = manifest.files.get("encoder", "encoder.onnx")
    tensors = calibration_tensors(model_id, lambda p: encoder_input(p, model.input_size), photos)
    input_name = model.encoder.input_names[0]
    return _quantize_one_file(
        store, model_id, out_id, enc_name, input_name, tensors, photos,
        lambda quant: sam_agreement(model, quant, photos),
        method=method, what=", encoder only", repeats=repeats, force=force, replace=replace,
        op_types=_SAM_OPS if method == "dynamic" else None,
        keep_head_float=False,  # the encoder's output is a feature map, not numbers
    )  # fmt: skip


def quantize_composite(
    store: ModelStore,
    model_id: str,
    photos: list[np.ndarray],
    method: str = "dynamic",
    replace: bool = False,
    repeats: int = 3,
    *,
    force: bool = False,
) -> QuantizeReport:
    """`DATASET/VERSION-int8` of a composite: the same detector, the int8 SAM (quantized
    first where missing, and installed only if it passes on its own)."""
    manifest = store.manifest(model_id)
    out_id = free_int8_id(store, model_id, replace)
    seg_id = str(manifest.postprocess.get("segmenter", ""))
    segmenter = registry.family_of(store.manifest(seg_id).family) if seg_id else None
    if segmenter is None or segmenter.quantize != "encoder":
        raise BadRequest(f"{model_id}: its segmenter is not a SAM model")
    q_seg = int8_id(seg_id)
    sam_report = None
    if not store.exists(q_seg) or replace:
        sam_report = quantize_sam(store, seg_id, photos, method, replace, repeats, force=force)
    staged = store.staging_dir()
    try:
        for f in store.folder(model_id).iterdir():
            if f.is_file():
                shutil.copy2(f, staged / f.name)
        source = dict(manifest.source)
        source["quantized_from"] = model_id
        source["quantization"] = f"segmenter {q_seg} (int8 encoder)"
        post = {**manifest.postprocess, "segmenter": q_seg}
        data = {**manifest.model_dump(), "source": source, "postprocess": post}
        staged_manifest = Manifest.model_validate(data)
        # Not closed: a composite's parts are the store's loaded models.
        quant = _load_staged(store, out_id, staged_manifest, staged)
        agreement = composite_agreement(store.get(model_id), quant, photos)
        if sam_report is None:  # the int8 SAM was there already: time its encoder again
            from cvserve.models.sam import SamModel, encoder_input

            sam = store.get(seg_id)
            assert isinstance(sam, SamModel)
            enc = store.manifest(seg_id).files.get("encoder", "encoder.onnx")
            f_path, q_path = store.folder(seg_id) / enc, store.folder(q_seg) / enc
            tensor = encoder_input(photos[0], sam.input_size)[0]
            float_ms, int8_ms = speed(f_path, q_path, sam.encoder.input_names[0], tensor, repeats)
            float_mb, int8_mb = f_path.stat().st_size / 2**20, q_path.stat().st_size / 2**20
        else:
            agreement = {**sam_report.agreement, **agreement}
            float_ms, int8_ms = sam_report.float_ms, sam_report.int8_ms
            float_mb, int8_mb = sam_report.float_mb, sam_report.int8_mb
        report = QuantizeReport(
            source_id=model_id,
            model_id=out_id,
            method=method,
            photos=len(photos),
            float_ms=float_ms,
            int8_ms=int8_ms,
            float_mb=float_mb,
            int8_mb=int8_mb,
            agreement=agreement,
        )
        _install(store, out_id, staged, data, report, force=force, replace=replace)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return report


def runtime_for_quantize() -> RuntimeOptions:
    return RuntimeOptions(lanes=1, threads_per_lane=1)
