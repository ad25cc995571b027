"""coco-segment (detector boxes prompting MobileSAM) on the bus photo: warm latency against a
bare MobileSAM encoder run measured in the same rounds, the per-box path it replaced, and the
opt-in int8 encoder (coco-segment/1-int8 from `cvserve models quantize coco-segment/1`).

Each round runs, one after the other: the bare encoder (`session.run` on the encoder's
tensor, all cores), the composite as served (`predict`), the previous path (detector, then
one decoder run per box on the all-core session) and, when the store has it, the int8
composite and its bare encoder. Ratios are taken per round, then the median.

    python bench/composite.py --store DIR [--rounds N]   # this section alone
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, cores  # noqa: E402

from cvserve.geometry import mask_iou  # noqa: E402
from cvserve.models.base import InferParams  # noqa: E402
from cvserve.models.context import RunContext  # noqa: E402
from cvserve.models.runtime import RuntimeOptions  # noqa: E402
from cvserve.models.store import ModelStore  # noqa: E402

COMPOSITE = "coco-segment/1"
GOAL = 1.2  # composite warm latency / bare encoder


def bus_photo() -> tuple[np.ndarray, str]:
    """Ultralytics' bus.jpg (810x1080, four objects) from a venv that has it, else the zoo's
    street photo (registry package cache)."""
    import cv2

    pattern = CACHE / "*venv/lib/python*/site-packages/ultralytics/assets/bus.jpg"
    for path in glob.glob(str(pattern)):  # bench/README's bench-venv
        bgr = cv2.imread(path)
        if bgr is not None:
            return np.ascontiguousarray(bgr[..., ::-1]), "bus.jpg 810x1080"
    from cvserve.settings import Settings
    from cvserve.zoo.packages import PackageCache
    from cvserve.zoo.photos import photo

    img = photo(PackageCache(Settings().data_dir / "cache"), "street")
    return img, f"street {img.shape[1]}x{img.shape[0]}"


def bare_encoder(store: ModelStore, sam_id: str, image: np.ndarray, threads: int):  # noqa: ANN201
    """A bare `session.run` of the SAM encoder on the image's tensor: ORT defaults (spinning
    threads included) but the thread count, as the benchmark's other bare runs."""
    import onnxruntime as ort

    from cvserve.models.sam import encoder_input

    path = store.folder(sam_id) / store.manifest(sam_id).files.get("encoder", "encoder.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: encoder_input(image)[0]}
    return lambda: sess.run(None, feed)


def _old_path(model, image: np.ndarray, params: InferParams) -> list:  # noqa: ANN001
    """The path before segment_boxes: one `segment` per box (all-core decoder session),
    unsplit preprocessing."""
    det = model.detector.predict(image, params).result
    if not len(det):
        return []
    emb = model.segmenter.embed(image, RunContext(alone=lambda: False))
    return model.per_box(emb, det.xyxy)


def composite_bench(store_dir: Path, rounds: int = 5, zoo_photos: bool = True) -> dict:
    n = cores()
    store = ModelStore(store_dir, RuntimeOptions(lanes=n, threads_per_lane=1, wide_threads=n))
    if not store.exists(COMPOSITE):
        return {"error": f"no {COMPOSITE} in {store_dir} (`cvserve models pull coco-segment`)"}
    image, photo_name = bus_photo()
    h, w = image.shape[:2]
    params = InferParams()
    model = store.get(COMPOSITE)
    seg_id = store.manifest(COMPOSITE).postprocess["segmenter"]
    enc = bare_encoder(store, seg_id, image, n)
    q_id = COMPOSITE + "-int8"
    quant = store.get(q_id) if store.exists(q_id) else None
    q_enc = (
        bare_encoder(store, store.manifest(q_id).postprocess["segmenter"], image, n)
        if quant is not None
        else None
    )
    # Warm-up, and the masks: served path against the previous one.
    new = model.predict(image, params).result
    old = _old_path(model, image, params)
    same = len(new.masks) == len(old) and all(
        (a.x0, a.y0) == (b.x0, b.y0) and np.array_equal(a.mask, b.mask)
        for a, b in zip(new.masks, old, strict=False)
    )
    out: dict = {
        "image": photo_name,
        "instances": len(new),
        "classes": [new.name_of(i) for i in range(len(new))],
        "masks_identical_to_per_box": bool(same),
        "mask_iou_vs_per_box_min": min(
            (mask_iou(a.full(w, h), b.full(w, h)) for a, b in zip(new.masks, old, strict=False)),
            default=1.0,
        ),
    }
    enc()
    if quant is not None and q_enc is not None:
        qdet = quant.predict(image, params).result
        out["int8_bus_mask_iou"] = [
            round(mask_iou(a.full(w, h), b.full(w, h)), 4)
            for a, b in zip(new.masks, qdet.masks, strict=False)
        ]
        q_enc()
    times: dict[str, list[float]] = {}

    def clock(name: str, fn) -> None:  # noqa: ANN001
        t0 = time.perf_counter()
        fn()
        times.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)

    for _ in range(rounds):
        clock("bare_encoder", enc)
        clock("composite", lambda: model.predict(image, params))
        clock("per_box_before", lambda: _old_path(model, image, params))
        if quant is not None and q_enc is not None:
            clock("int8_bare_encoder", q_enc)
            clock("int8_composite", lambda: quant.predict(image, params))

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    out["p50_ms"] = {k: round(statistics.median(v), 1) for k, v in times.items()}
    # On a shared machine the fastest round is the least disturbed one: ratios of minima too.
    out["min_ms"] = {k: round(min(v), 1) for k, v in times.items()}
    out["min_ratios"] = {
        "composite_over_bare": min(times["composite"]) / min(times["bare_encoder"]),
        "per_box_before_over_bare": min(times["per_box_before"]) / min(times["bare_encoder"]),
    }
    if quant is not None:
        out["min_ratios"]["int8_encoder_speedup"] = min(times["bare_encoder"]) / min(
            times["int8_bare_encoder"]
        )
    out["composite_over_bare"] = ratio("composite", "bare_encoder")
    out["per_box_before_over_bare"] = ratio("per_box_before", "bare_encoder")
    if quant is not None:
        out["int8_encoder_speedup"] = ratio("bare_encoder", "int8_bare_encoder")
        out["int8_composite_over_float_bare"] = ratio("int8_composite", "bare_encoder")
        if zoo_photos:
            try:
                from cvserve.settings import Settings
                from cvserve.tools.quantize import composite_agreement, default_photos

                photos = default_photos(Settings().data_dir)
                out["int8_zoo_photos"] = composite_agreement(model, quant, photos)
            except Exception as e:  # the registry cache may be missing: no agreement then
                out["int8_zoo_photos"] = {"error": f"{type(e).__name__}: {e}"}
    else:
        out["int8_note"] = f"no {q_id}: `cvserve models quantize {COMPOSITE}` adds it"
    out["rounds"] = rounds
    out["threads"] = n
    model.close()
    if quant is not None:
        quant.close()
    return out


def lines(res: dict) -> list[str]:
    """The README lines of this section."""
    if "error" in res:
        return [f"- coco-segment: {res['error']}"]
    p = res["p50_ms"]
    ok = res["composite_over_bare"] <= GOAL
    out = [
        f"- coco-segment warm on {res['image']} ({res['instances']} instances): "
        f"{p['composite']:.0f} ms = x{res['composite_over_bare']:.2f} the bare encoder "
        f"({p['bare_encoder']:.0f} ms, same rounds) {'ok' if ok else 'MISS'} (goal <= x{GOAL}); "
        f"before (one decoder run per box): {p['per_box_before']:.0f} ms = "
        f"x{res['per_box_before_over_bare']:.2f}; masks identical to the per-box path: "
        f"{res['masks_identical_to_per_box']}; fastest rounds: x"
        f"{res['min_ratios']['composite_over_bare']:.2f} (before x"
        f"{res['min_ratios']['per_box_before_over_bare']:.2f})"
    ]
    if "int8_encoder_speedup" in res:
        zoo = res.get("int8_zoo_photos", {})
        agree = (
            f", instance mask IoU vs float on the zoo photos mean "
            f"{zoo['instance_mask_iou_mean']:.3f} (min {zoo['instance_mask_iou_min']:.3f}, "
            f"{zoo['instances']:.0f} instances)"
            if "instance_mask_iou_mean" in zoo
            else ""
        )
        out.append(
            f"- opt-in int8 encoder (coco-segment/1-int8): encoder x{res['int8_encoder_speedup']:.2f} "
            f"({p['int8_bare_encoder']:.0f} ms), composite {p['int8_composite']:.0f} ms = "
            f"x{res['int8_composite_over_float_bare']:.2f} the float bare encoder; bus mask IoU "
            f"{res['int8_bus_mask_iou']}{agree}"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-zoo-photos", action="store_true")
    args = p.parse_args()
    res = composite_bench(args.store, args.rounds, not args.no_zoo_photos)
    print(json.dumps(res, indent=2))
    print("\n".join(lines(res)))


if __name__ == "__main__":
    main()
