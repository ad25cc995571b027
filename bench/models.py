"""Build the benchmark's ONNX models and photos into .cache/bench-models/ (not committed).

Runs in the tooling venv (torch + ultralytics), fully offline:

    .cache/bench-venv/bin/python bench/models.py

Ultralytics builds YOLOv8n detect / seg / pose / cls from its yaml files with random
weights and exports them to ONNX exactly as it exports trained ones: same graph, same
shapes, same cost, same metadata. Random weights detect nothing, so the class biases of the
head are shifted (one constant, found on the benchmark photo) until a realistic number of
candidates passes the default confidence: post-processing then does real work (NMS over a
few dozen boxes, a few dozen masks, keypoints).

Photos: Ultralytics ships two real photos (bus.jpg 810x1080, zidane.jpg 1280x720); the
benchmark's 640x480, 1280x960 and 1920x1080 JPEGs are made from them (the larger ones upscaled with
mild sensor-like noise so its JPEG entropy, hence decode cost, is that of a real photo).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".cache" / "bench-models"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tvstub  # noqa: E402

tvstub.install()

MODELS = {
    # name: (yaml, imgsz, candidates wanted above conf 0.4 on the 640x480 photo)
    "yolov8n": ("yolov8n.yaml", 640, 60),
    "yolov8n-seg": ("yolov8n-seg.yaml", 640, 60),
    "yolov8n-pose": ("yolov8n-pose.yaml", 640, 20),
    "yolov8n-cls": ("yolov8n-cls.yaml", 224, 0),
}


def make_photos(out: Path) -> dict[str, str]:
    import cv2
    import numpy as np
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    rng = np.random.default_rng(0)
    bus = cv2.imread(str(assets / "bus.jpg"))  # 810x1080 portrait
    zidane = cv2.imread(str(assets / "zidane.jpg"))  # 1280x720
    h, w = bus.shape[:2]
    crop_h = w * 3 // 4
    top = (h - crop_h) // 3
    small = cv2.resize(bus[top : top + crop_h], (640, 480), interpolation=cv2.INTER_AREA)
    big = cv2.resize(zidane, (1920, 1080), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    big += rng.normal(0, 3.0, big.shape).astype(np.float32)
    big = np.clip(big, 0, 255).astype(np.uint8)
    # The 1280x960 size: the same bus crop upscaled, with a photo's noise.
    mid = cv2.resize(bus[top : top + crop_h], (1280, 960), interpolation=cv2.INTER_CUBIC)
    mid = mid.astype(np.float32) + rng.normal(0, 3.0, mid.shape).astype(np.float32)
    mid = np.clip(mid, 0, 255).astype(np.uint8)
    files = {}
    for name, img in (("640x480", small), ("1280x960", mid), ("1920x1080", big)):
        path = out / f"photo-{name}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        files[name] = path.name
    return files


def _calibrate(model, photo: Path, imgsz: int, wanted: int) -> float:
    """Shift the head's class biases so `wanted` anchors score above 0.4 on the photo."""
    import cv2
    import numpy as np
    import torch

    head = model.model.model[-1]
    img = cv2.imread(str(photo))[..., ::-1]
    h, w = img.shape[:2]
    r = min(imgsz / h, imgsz / w)
    nw, nh = round(w * r), round(h * r)
    canvas = np.full((imgsz, imgsz, 3), 114, np.uint8)
    top, left = (imgsz - nh) // 2, (imgsz - nw) // 2
    canvas[top : top + nh, left : left + nw] = cv2.resize(img, (nw, nh))
    x = torch.from_numpy(canvas.transpose(2, 0, 1).copy()).float()[None] / 255.0
    net = model.model.eval()
    with torch.no_grad():
        out = net(x)
    pred = out
    while isinstance(pred, (tuple, list)):
        pred = pred[0]
    nc = head.nc
    scores = pred[0, 4 : 4 + nc].max(0).values.clamp(1e-7, 1 - 1e-7)
    logits = torch.log(scores / (1 - scores)).sort(descending=True).values
    target = float(logits[wanted - 1])
    delta = float(np.log(0.45 / 0.55)) - target  # the wanted-th anchor lands at 0.45
    with torch.no_grad():
        for seq in head.cv3:
            seq[-1].bias += delta
    return delta


def build(name: str, out: Path, photo: Path, seed: int = 0) -> dict[str, object]:
    import torch
    from ultralytics import YOLO

    yaml, imgsz, wanted = MODELS[name]
    torch.manual_seed(seed)
    model = YOLO(yaml)
    delta = _calibrate(model, photo, imgsz, wanted) if wanted else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            exported = model.export(format="onnx", imgsz=imgsz, simplify=True, opset=17)
        finally:
            os.chdir(cwd)
        dest = out / f"{name}.onnx"
        shutil.move(
            str(Path(tmp) / exported) if not Path(exported).is_absolute() else exported, dest
        )
    # A .pt next to it lets Ultralytics' own predict run on the same weights.
    pt = out / f"{name}.pt"
    model.save(str(pt))
    return {
        "file": dest.name,
        "pt": pt.name,
        "yaml": yaml,
        "imgsz": imgsz,
        "bias_shift": delta,
        "bytes": dest.stat().st_size,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--only", nargs="*", default=list(MODELS))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    index_path = a.out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index["photos"] = make_photos(a.out)
    index.setdefault("models", {})
    for name in a.only:
        print(f"building {name} ...", file=sys.stderr)
        index["models"][name] = build(name, a.out, a.out / index["photos"]["640x480"])
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    print(json.dumps(index, indent=2))


if __name__ == "__main__":
    main()
