"""Ultralytics `predict` on the same ONNX file and photos (runs in the tooling venv).

    .cache/bench-venv/bin/python bench/ultra.py MODEL.onnx TASK IMAGE... --n 20

Prints one JSON object: per image, predict latencies (decode from the file included, as
cvserve's include decoding the request's JPEG) and the number of results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("task")
    p.add_argument("images", nargs="+")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--min-s", type=float, default=1.0)
    p.add_argument("--imgsz", type=int, default=640)
    a = p.parse_args()
    import tvstub

    tvstub.install()
    import ultralytics
    from ultralytics import YOLO

    model = YOLO(a.model, task=a.task)
    out: dict[str, object] = {"version": ultralytics.__version__, "images": {}}
    for image in a.images:
        kw = {"imgsz": a.imgsz, "verbose": False, "conf": 0.4, "iou": 0.3}
        res = model.predict(image, **kw)  # warm-up (builds the ORT session)
        model.predict(image, **kw)
        lat = []
        t_end = time.perf_counter() + a.min_s
        while len(lat) < a.n or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            res = model.predict(image, **kw)
            lat.append(time.perf_counter() - t0)
        r = res[0]
        count = len(r.boxes) if r.boxes is not None else (1 if r.probs is not None else 0)
        out["images"][os.path.basename(image)] = {"latencies_s": lat, "results": count}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
