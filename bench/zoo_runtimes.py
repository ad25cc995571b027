"""The zoo's models on each runtime and precision, on real photos: latency, agreement, load time.

    python bench/zoo_runtimes.py --store DIR [--rounds 5] [--model-budget 40] [--no-quantize]
    python bench/zoo_runtimes.py --store DIR --zoo-models faces,imagenet --no-quantize
    python bench/runtimes.py --store DIR ...          # the same (runtimes.py's zoo mode)

For each of the seven default zoo models in the store (`cvserve models pull` each of
`cvserve.zoo.DEFAULT_SET`), the model is loaded through the store as the server loads it, in
four variants: ONNX Runtime f32 (the default), OpenVINO f32, OpenVINO bf16 (the opt-in
`runtime_precision: bf16`) and the int8 model `ID-int8` (ONNX Runtime; made here by
`cvserve models quantize ID` when the store lacks it, unless --no-quantize). Every
session has one thread (a lane's), and the pixel work does not split over cores either.

- **load**: seconds of the store's load (`ModelStore.stats`; the files are in the page cache,
  the process is not fresh). coco-segment's load includes its parts' (coco-detect and
  mobilesam, or mobilesam/1-int8), as a first request to it in a fresh server pays.
- **latency**: one photo per model (bench/memory.py's), the whole call as the server makes it
  (the model's own reference preprocessing, the runs, post-processing; SAM: embed, then a box
  prompt) and the bare session runs alone (the same feeds that call gave each session,
  replayed back to back). Rounds interleave the variants, in a rotating order; medians.
- **agreement** with the ONNX Runtime f32 prediction on the six zoo photos
  (`cvserve.tools.quantize.DEFAULT_PHOTOS`), in task terms: detection/keypoints/instance:
  box F1 at IoU 0.5 (same class, greedy), mean matched IoU, max score and box-corner
  differences of matched boxes, max keypoint difference of matched people (keypoints the
  reference scores >= 0.3), matched mask IoU; classification: top-1 same, top-5 overlap, max
  probability difference; semantic: foreground IoU and max probability difference; SAM: the
  mask IoU of a centre box prompt (20-80 % of each side).

int8 calibration uses Ultralytics' bus.jpg and zidane.jpg when a bench venv has them (bench/
README's recipe), so the photos it is judged on are not the ones it was calibrated on;
otherwise the zoo's photos (flagged in the report). Quantizing, and proving that the int8
model loads, each run in a process of their own: a graph ONNX Runtime cannot take may abort
the process (coco-detect's static int8 did); such a model is removed again and reported.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, RESULTS_DIR, ROOT  # noqa: E402
from memory import MODELS as TIMING_PHOTO  # noqa: E402  model -> its photo there

from cvserve.geometry import mask_iou, match_boxes  # noqa: E402
from cvserve.models.base import InferParams, Model  # noqa: E402
from cvserve.models.context import RunContext  # noqa: E402
from cvserve.models.runtime import RuntimeOptions, SessionPool  # noqa: E402
from cvserve.models.store import ModelStore, runtimes_of  # noqa: E402
from cvserve.results import Classification, Detections, SemanticMask  # noqa: E402
from cvserve.tasks import Task  # noqa: E402

VARIANTS = ("onnxruntime f32", "openvino f32", "openvino bf16", "int8")
REFERENCE = VARIANTS[0]
# Loaded in this order: ONNX Runtime last, so each float model's load record (what
# `cvserve models list` shows) is the default runtime's.
LOAD_ORDER = ("openvino f32", "openvino bf16", "int8", "onnxruntime f32")
KEYPOINT_CONF = 0.3  # keypoints compared where the reference is at least this sure
SAM_BOX = (0.2, 0.2, 0.8, 0.8)  # the SAM prompt, as fractions of the photo's sides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (at most)")
    p.add_argument(
        "--model-budget", type=float, default=40.0, help="seconds of timing per model (>= 2 rounds)"
    )
    p.add_argument("--no-quantize", action="store_true", help="only int8 models already stored")
    p.add_argument("--zoo-models", default=",".join(TIMING_PHOTO), help="comma list of zoo names")


def options(variant: str) -> RuntimeOptions:
    one = {"lanes": 1, "threads_per_lane": 1, "wide_threads": 0}
    if variant.startswith("openvino"):
        return RuntimeOptions(**one, runtime="openvino", precision=variant.split()[1])
    return RuntimeOptions(**one, runtime="onnxruntime", precision="f32")


# -- photos ----------------------------------------------------------------------------------
def zoo_photos() -> dict[str, np.ndarray]:
    from cvserve.settings import Settings
    from cvserve.tools.quantize import DEFAULT_PHOTOS
    from cvserve.zoo.packages import PackageCache
    from cvserve.zoo.photos import photo

    packages = PackageCache(Settings().data_dir / "cache")
    return {name: photo(packages, name) for name in DEFAULT_PHOTOS}


def calibration_photos() -> tuple[list[np.ndarray], str]:
    import cv2

    found = []
    for name in ("bus.jpg", "zidane.jpg"):
        pattern = CACHE / f"*venv/lib/python*/site-packages/ultralytics/assets/{name}"
        for path in sorted(glob.glob(str(pattern)))[:1]:
            bgr = cv2.imread(path)
            if bgr is not None:
                found.append(np.ascontiguousarray(bgr[..., ::-1]))
    if found:
        return found, "Ultralytics bus.jpg, zidane.jpg"
    return list(zoo_photos().values()), "the zoo photos (the same as judged on)"


# -- the call, and its session runs ----------------------------------------------------------
# One thread, as on a busy server: never the all-core session, no split pixel work.
BUSY = RunContext(alone=lambda: False)


def call(model: Model, image: np.ndarray) -> Any:
    """The model's work for one image as the server does it: predict, or for SAM embed and
    a box prompt (the mask)."""
    if model.task is Task.PROMPTABLE_SEGMENTATION:
        h, w = image.shape[:2]
        box = np.array([w * SAM_BOX[0], h * SAM_BOX[1], w * SAM_BOX[2], h * SAM_BOX[3]], np.float32)
        emb = model.embed(image, BUSY)  # type: ignore[attr-defined]
        return model.segment(emb, box=box, ctx=BUSY)[0]  # type: ignore[attr-defined]
    return model.predict(image, InferParams.defaults_for(model.task), BUSY).result


def pools_of(model: Model) -> list[SessionPool]:
    found: list[SessionPool] = []

    def walk(obj: object, depth: int) -> None:
        if isinstance(obj, SessionPool):
            if all(p is not obj for p in found):
                found.append(obj)
        elif isinstance(obj, Model) and depth < 4:
            for value in list(vars(obj).values()):
                walk(value, depth + 1)

    walk(model, 0)
    return found


def bare_runs(model: Model, image: np.ndarray) -> Callable[[], None]:
    """The session runs one call makes (each pool's feeds, in order), to replay alone."""
    calls: list[tuple[Callable[[dict[str, np.ndarray]], Any], dict[str, np.ndarray]]] = []
    pools = pools_of(model)
    for pool in pools:
        original = pool.run

        def record(feeds: dict[str, np.ndarray], ctx: Any = BUSY, original: Any = original) -> Any:
            calls.append((original, feeds))
            return original(feeds, ctx)

        pool.run = record  # type: ignore[method-assign]
    try:
        call(model, image)
    finally:
        for pool in pools:
            del pool.run

    def replay() -> None:
        for run, feeds in calls:
            run(feeds)

    return replay


# -- agreement -------------------------------------------------------------------------------
def agreement(refs: list[Any], others: list[Any], photos: list[np.ndarray]) -> dict[str, Any]:
    first = refs[0]
    if isinstance(first, Detections):
        return _detections(refs, others, photos)
    if isinstance(first, Classification):
        top1, top5, diff = [], [], 0.0
        for a, b in zip(refs, others, strict=True):
            ra, rb = np.argsort(-a.scores), np.argsort(-b.scores)
            top1.append(float(ra[0] == rb[0]))
            top5.append(len(set(ra[:5].tolist()) & set(rb[:5].tolist())) / 5)
            diff = max(diff, float(np.abs(a.scores - b.scores).max()))
        return {"top1_same": float(np.mean(top1)), "top5_overlap": float(np.mean(top5)),
                "max_prob_diff": diff}  # fmt: skip
    if isinstance(first, SemanticMask):
        ious, diff, same = [], 0.0, []
        for a, b in zip(refs, others, strict=True):
            ious.append(mask_iou(a.class_map != 0, b.class_map != 0))
            same.append(float(np.mean(a.class_map == b.class_map)))
            diff = max(diff, float(np.abs(_fg_prob(a) - _fg_prob(b)).max()))
        return {"fg_iou_mean": float(np.mean(ious)), "fg_iou_min": float(np.min(ious)),
                "pixels_same": float(np.mean(same)), "max_prob_diff": diff}  # fmt: skip
    # SAM: boolean masks
    ious = [mask_iou(a, b) for a, b in zip(refs, others, strict=True)]
    return {"mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious))}


def _fg_prob(m: SemanticMask) -> np.ndarray:
    """Two classes: the foreground probability (confidence is that of the class shown)."""
    if len(m.class_names) == 2:
        return np.where(m.class_map == 1, m.confidence, 1.0 - m.confidence)
    return m.confidence


def _detections(refs: list[Any], others: list[Any], photos: list[np.ndarray]) -> dict[str, Any]:
    n_ref = n_other = matched = 0
    ious: list[float] = []
    mask_ious: list[float] = []
    score = corner = kp = 0.0
    has_kp = has_masks = False
    for a, b, img in zip(refs, others, photos, strict=True):
        h, w = img.shape[:2]
        pairs = match_boxes(a.xyxy, a.class_id, b.xyxy, b.class_id)
        n_ref, n_other, matched = n_ref + len(a), n_other + len(b), matched + len(pairs)
        for i, j, iou in pairs:
            ious.append(iou)
            score = max(score, abs(float(a.confidence[i]) - float(b.confidence[j])))
            corner = max(corner, float(np.abs(a.xyxy[i] - b.xyxy[j]).max()))
            if a.keypoints is not None and b.keypoints is not None:
                has_kp = True
                sure = a.keypoints[i, :, 2] >= KEYPOINT_CONF
                if sure.any():
                    d = np.hypot(*(a.keypoints[i, sure, :2] - b.keypoints[j, sure, :2]).T)
                    kp = max(kp, float(d.max()))
            if a.masks and b.masks:
                has_masks = True
                mask_ious.append(mask_iou(a.masks[i].full(w, h), b.masks[j].full(w, h)))
    total = n_ref + n_other
    out: dict[str, Any] = {
        "boxes_ref": n_ref,
        "boxes": n_other,
        "box_f1_iou50": 2 * matched / total if total else 1.0,
        "matched_iou_mean": float(np.mean(ious)) if ious else float("nan"),
        "max_score_diff": score,
        "max_corner_diff_px": corner,
    }
    if has_kp:
        out["max_keypoint_diff_px"] = kp
    if has_masks:
        out["mask_iou_mean"] = float(np.mean(mask_ious))
        out["mask_iou_min"] = float(np.min(mask_ious))
    return out


def describe(a: dict[str, Any]) -> str:
    """The agreement cell of the table."""
    if "error" in a:
        return a["error"]
    if "box_f1_iou50" in a:
        text = (
            f"F1 {a['box_f1_iou50']:.3f} ({a['boxes']}/{a['boxes_ref']} boxes), IoU "
            f"{a['matched_iou_mean']:.3f}, score Δ {a['max_score_diff']:.3f}, corner Δ "
            f"{a['max_corner_diff_px']:.1f} px"
        )
        if "max_keypoint_diff_px" in a:
            text += f", keypoint Δ {a['max_keypoint_diff_px']:.1f} px"
        if "mask_iou_mean" in a:
            text += f", mask IoU {a['mask_iou_mean']:.3f} (min {a['mask_iou_min']:.3f})"
        return text
    if "top1_same" in a:
        return (
            f"top-1 same {a['top1_same']:.2f}, top-5 overlap {a['top5_overlap']:.2f}, prob Δ "
            f"{a['max_prob_diff']:.4f}"
        )
    if "fg_iou_mean" in a:
        return (
            f"fg IoU {a['fg_iou_mean']:.4f} (min {a['fg_iou_min']:.4f}), prob Δ "
            f"{a['max_prob_diff']:.3f}"
        )
    return f"box-prompt mask IoU {a['mask_iou_mean']:.3f} (min {a['mask_iou_min']:.3f})"


# -- int8 ------------------------------------------------------------------------------------
def _tail(text: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[:400]


def loads_alone(root: Path, model_id: str) -> tuple[bool, str]:
    """Whether the model loads (ONNX Runtime, as the server) in a process of its own: a
    graph can make ONNX Runtime abort the whole process, which the bench must survive."""
    code = (
        "import sys; from pathlib import Path; from cvserve.models.store import ModelStore; "
        "ModelStore(Path(sys.argv[1])).get(sys.argv[2])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root), model_id],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if proc.returncode == 0:
        return True, ""
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return False, f"loading {model_id} ended the process ({how}): {_tail(proc.stderr, 1)}"


def ensure_int8(root: Path, model_id: str, calib_dir: Path) -> dict[str, Any]:
    """`ID-int8` in the store: there already, or made now by `cvserve models quantize ID
    --photos CALIB` (its default method per kind) in a process of its own; then proved to
    load in another. One made here that cannot load is removed again; the reason is kept."""
    from cvserve.tools.quantize import int8_id

    store = ModelStore(root)
    out_id = int8_id(model_id)
    out: dict[str, Any] = {"model_id": out_id, "made": False}
    if not store.exists(out_id):
        cmd = [sys.executable, "-m", "cvserve.cli", "models", "quantize", model_id,
               "--models-dir", str(root), "--photos", str(calib_dir)]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        out["quantize_s"] = time.perf_counter() - t0
        out["made"] = store.exists(out_id)
        out["quantize_output"] = _tail(proc.stdout + proc.stderr, 4)
        if proc.returncode != 0:
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            out["quantize_failed"] = f"quantize {how}: {_tail(proc.stdout + proc.stderr, 2)}"
            if not out["made"]:
                return {"error": out["quantize_failed"], **out, "model_id": None}
    ok, why = loads_alone(root, out_id)
    if not ok:
        if out["made"]:
            store.remove(out_id)  # never leave a model in the store that aborts a server
        return {**out, "model_id": None, "error": why, "removed": out["made"]}
    return out


def write_photos(photos: list[np.ndarray], folder: Path) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(photos):
        cv2.imwrite(str(folder / f"calib{i}.png"), np.ascontiguousarray(rgb[..., ::-1]))
    return folder


# -- one model -------------------------------------------------------------------------------
def bench_model(
    root: Path, name: str, photos: dict[str, np.ndarray], int8: dict[str, Any], args: Any
) -> dict[str, Any]:
    model_id = f"{name}/1"
    stores: dict[str, ModelStore] = {}
    models: dict[str, Model] = {}
    out: dict[str, Any] = {"model_id": model_id, "variants": {}}
    for variant in LOAD_ORDER:
        mid = int8.get("model_id") if variant == "int8" else model_id
        rec: dict[str, Any] = {}
        out["variants"][variant] = rec
        if mid is None:
            rec["error"] = "no int8: " + str(int8.get("error", "not made"))
            continue
        store = ModelStore(root, options("onnxruntime f32" if variant == "int8" else variant))
        try:
            models[variant] = store.get(mid)
        except Exception as e:
            rec["error"] = f"load failed: {type(e).__name__}: {e}"[:300]
            continue
        stores[variant] = store
        rec["model_id"] = mid
        rec["load_s"] = store.stats[mid].seconds
        rec["load_resident_mb"] = store.stats[mid].resident_bytes / 1e6
        rec["runtimes"] = list(runtimes_of(models[variant]))
    try:
        names = list(photos)
        images = list(photos.values())
        ref_model = models[REFERENCE]
        results = {v: [call(m, img) for img in images] for v, m in models.items()}
        for v in models:
            if v != REFERENCE:
                out["variants"][v]["agreement"] = agreement(results[REFERENCE], results[v], images)
        out["photos"] = names
        out["task"] = ref_model.task.value
        # Latency on the model's own photo.
        image = photos[TIMING_PHOTO[name]]
        out["timing_photo"] = f"{TIMING_PHOTO[name]} {image.shape[1]}x{image.shape[0]}"
        bare = {v: bare_runs(m, image) for v, m in models.items()}
        times: dict[str, dict[str, list[float]]] = {v: {"call": [], "bare": []} for v in models}
        order = [v for v in VARIANTS if v in models]
        t_end = time.perf_counter() + args.model_budget
        for r in range(max(2, args.rounds)):
            for v in order[r % len(order) :] + order[: r % len(order)]:
                t0 = time.perf_counter()
                call(models[v], image)
                t1 = time.perf_counter()
                bare[v]()
                t2 = time.perf_counter()
                times[v]["call"].append((t1 - t0) * 1e3)
                times[v]["bare"].append((t2 - t1) * 1e3)
            if r >= 1 and time.perf_counter() > t_end:
                break
        for v in models:
            rec = out["variants"][v]
            rec["call_ms"] = statistics.median(times[v]["call"])
            rec["bare_ms"] = statistics.median(times[v]["bare"])
            rec["rounds"] = times[v]
        ref = out["variants"][REFERENCE]
        for v in models:
            rec = out["variants"][v]
            rec["call_speedup"] = ref["call_ms"] / rec["call_ms"]
            rec["bare_speedup"] = ref["bare_ms"] / rec["bare_ms"]
    finally:
        for store in stores.values():
            store.close()
    return out


# -- report ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import onnxruntime

    from cvserve.models.backends.openvino import version as ov_version

    model = platform.processor()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        commit = ""
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "flags": sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512_vnni"))),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "openvino": ov_version(),
        "numpy": np.__version__,
        "commit": commit,
    }


def table(report: dict[str, Any]) -> str:
    rows = [
        "| model | variant | load s | call ms (x) | bare ms (x) | agreement with ONNX Runtime f32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        for v in VARIANTS:
            rec = m.get("variants", {}).get(v)
            if rec is None:
                continue
            if "call_ms" not in rec:
                rows.append(f"| {name} | {v} | - | - | - | {rec.get('error', '-')} |")
                continue
            agree = "reference" if v == REFERENCE else describe(rec.get("agreement", {}))
            label = v if v != "int8" else f"int8 ({rec['model_id']})"
            rows.append(
                f"| {name} | {label} | {rec['load_s']:.2f} | {rec['call_ms']:.1f} "
                f"({rec['call_speedup']:.2f}x) | {rec['bare_ms']:.1f} ({rec['bare_speedup']:.2f}x) "
                f"| {agree} |"
            )
    return "\n".join(rows)


def openvino_warm_up(root: Path, names: list[str]) -> dict[str, Any]:
    """OpenVINO's plugin loads with the process's first compile (seconds): paid here, once,
    on the first model, so that no model's load time carries it. Returns what it cost."""
    model_id = next((f"{n}/1" for n in names if ModelStore(root).exists(f"{n}/1")), None)
    if model_id is None:
        return {}
    times = []
    for _ in range(2):
        store = ModelStore(root, options("openvino f32"))
        store.get(model_id)
        times.append(store.stats[model_id].seconds)
        store.close()
    return {"model_id": model_id, "first_s": times[0], "second_s": times[1]}


def run(args: Any) -> dict[str, Any]:
    import cv2

    cv2.setNumThreads(1)  # one thread: the pixel work too, as the sessions
    from cvserve.models.runtime import _limit_blas_threads

    _limit_blas_threads()
    root = Path(args.store)
    names = [n for n in args.zoo_models.split(",") if n]
    report: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "command": " ".join(sys.argv),
        "store": str(root),
        "models": {},
        "int8": {},
    }
    photos = zoo_photos()
    calib, calib_name = calibration_photos()
    calib_dir = write_photos(calib, Path(tempfile.mkdtemp(prefix="cvserve-calib-")))
    report["openvino_first_load"] = openvino_warm_up(root, names)
    report["int8_calibration"] = calib_name
    t_start = time.perf_counter()
    for name in names:
        model_id = f"{name}/1"
        if not ModelStore(root).exists(model_id):
            report["models"][name] = {"error": f"{model_id} is not in {root}"}
            continue
        from cvserve.tools.quantize import int8_id

        if args.no_quantize and not ModelStore(root).exists(int8_id(model_id)):
            int8 = {"model_id": None, "error": "--no-quantize"}
        else:
            int8 = ensure_int8(root, model_id, calib_dir)
        report["int8"][name] = int8
        print(f"{name}: int8 {int8.get('model_id') or int8.get('error')}", flush=True)
        report["models"][name] = bench_model(root, name, photos, int8, args)
        print(table({"models": {name: report["models"][name]}}).split("\n", 2)[2], flush=True)
    shutil.rmtree(calib_dir, ignore_errors=True)
    report["seconds"] = time.perf_counter() - t_start
    report["loadavg_end"] = os.getloadavg()
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="a store with the zoo pulled")
    p.add_argument("--out", type=Path, default=None)
    add_arguments(p)
    args = p.parse_args(argv)
    finish(args, run(args))


def finish(args: Any, report: dict[str, Any]) -> None:
    print()
    print(table(report))
    m = report["machine"]
    print(
        f"\n{report['date_utc']} UTC, {m['cpu']} ({m['cores']} cores; {', '.join(m['flags'])}), "
        f"onnxruntime {m['onnxruntime']}, openvino {m['openvino']}, int8 calibrated on "
        f"{report['int8_calibration']}; load average {report['loadavg_start'][0]:.1f} -> "
        f"{report['loadavg_end'][0]:.1f}; {report['seconds']:.0f} s"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS_DIR / f"zoo-runtimes-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"report: {out}")


if __name__ == "__main__":
    main()
