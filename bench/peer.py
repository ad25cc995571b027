"""The main self-hosted peer (`inference` on PyPI), offline, on a local copy of the same model.

Runs in the peer's own venv (see bench/README.md for the recipe):

    .cache/peer-venv/bin/python bench/peer.py MODEL.onnx TASK IMAGE... --imgsz 640

The model is laid out in the peer's local model cache exactly as its own download would
leave it (`<MODEL_CACHE_DIR>/<dataset>/<version>/weights.onnx`, `environment.json`,
`class_names.txt`, `model_type.json`), so the peer loads it without any network, through
its own model class, preprocessing and post-processing. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

TASKS = {
    # cvserve/Ultralytics task -> (peer project_task_type, model_type, class)
    "detect": ("object-detection", "yolov8n", "YOLOv8ObjectDetection"),
    "segment": ("instance-segmentation", "yolov8n-seg", "YOLOv8InstanceSegmentation"),
    "pose": ("keypoint-detection", "yolov8n-pose", "YOLOv8KeypointsDetection"),
    "classify": ("classification", "yolov8n-cls", "YOLOv8Classification"),
}


def layout(cache: Path, model_id: str, onnx: Path, task: str, imgsz: int, nc: int) -> Path:
    folder = cache / model_id
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(onnx, folder / "weights.onnx")
    task_type, model_type, _ = TASKS[task]
    names = [str(i) for i in range(nc)]
    env = {
        "PREPROCESSING": json.dumps(
            {
                "auto-orient": {"enabled": True},
                "resize": {
                    "enabled": True,
                    "format": "Fit (grey edges) in",
                    "width": imgsz,
                    "height": imgsz,
                },
            }
        ),
        "CLASS_MAP": {str(i): n for i, n in enumerate(names)},
        "COLORS": {n: "#ff0000" for n in names},
        "MULTICLASS": False,
    }
    (folder / "environment.json").write_text(json.dumps(env))
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    (folder / "model_type.json").write_text(
        json.dumps({"project_task_type": task_type, "model_type": model_type})
    )
    if task == "pose":
        kps = {str(i): f"kp{i}" for i in range(17)}
        (folder / "keypoints_metadata.json").write_text(
            json.dumps([{"object_class_id": 0, "keypoints": kps, "edges": []}])
        )
    return folder


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("images", nargs="+")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--nc", type=int, default=80)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--min-s", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2, help="client threads for throughput")
    p.add_argument("--duration", type=float, default=3.0)
    a = p.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="peer-cache-"))
    os.environ["MODEL_CACHE_DIR"] = str(cache)
    os.environ.setdefault("ROBOFLOW_API_KEY", "offline")
    os.environ.setdefault("DISABLE_VERSION_CHECK", "True")
    os.environ.setdefault("METRICS_ENABLED", "False")
    os.environ.setdefault("ENABLE_USAGE_TRACKING", "False")
    model_id = "bench-model/1"
    layout(cache, model_id, Path(a.model), a.task, a.imgsz, a.nc)
    out: dict[str, object] = {}
    try:
        import importlib.metadata as md

        out["version"] = md.version("inference")
        import inference.models.yolov8 as yolov8

        cls = getattr(yolov8, TASKS[a.task][2])
        t0 = time.perf_counter()
        model = cls(model_id=model_id, api_key="offline")
        out["load_s"] = time.perf_counter() - t0
        out["images"] = {}
        for image in a.images:
            data = Path(image).read_bytes()
            import base64

            request = {"type": "base64", "value": base64.b64encode(data).decode()}
            kw = {"confidence": 0.4, "iou_threshold": 0.3} if a.task != "classify" else {}

            def once(request=request, kw=kw):
                return model.infer(request, **kw)

            res = once()
            once()
            lat = []
            t_end = time.perf_counter() + a.min_s
            while len(lat) < a.n or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                res = once()
                lat.append(time.perf_counter() - t0)
            first = res[0] if isinstance(res, list) else res
            preds = getattr(first, "predictions", None)
            count = len(preds) if isinstance(preds, list) else 1
            # Throughput with several client threads (the peer's own session lock decides).
            counts = [0] * a.threads
            stop = time.perf_counter() + a.duration

            def loop(i: int, stop=stop, counts=counts, once=once) -> None:
                while time.perf_counter() < stop:
                    once()
                    counts[i] += 1

            t0 = time.perf_counter()
            threads = [threading.Thread(target=loop, args=(i,)) for i in range(a.threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            tput = sum(counts) / (time.perf_counter() - t0)
            out["images"][os.path.basename(image)] = {
                "latencies_s": lat,
                "results": count,
                "throughput_rps": tput,
                "throughput_threads": a.threads,
            }
    except Exception as e:  # report why, exactly, rather than crash the benchmark
        import traceback

        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-3000:]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
