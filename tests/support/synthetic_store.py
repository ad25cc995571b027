"""A model store of synthetic models with exactly known outputs, for the client, the
`predict` CLI and the web page tests.

On a 640x640 image (the models' input size, so letterboxing is the identity) the models
answer:
- det/1 (object detection, classes person, car, dog): person box (120, 100)-(280, 340) at
  0.92, car (360, 360)-(560, 480) at 0.71, dog (460, 110)-(540, 190) at 0.35 (below the
  default 40 % threshold).
- seg/1 (instance segmentation, class blob): one box (100, 100)-(300, 260) at 0.88 whose
  mask fills the box.
- pose/1 (keypoints, class person, 17 COCO keypoints): one box with keypoints on a grid.
- cls/1 (classification): cat 0.7, dog 0.2, bird 0.1.
- sem/1 (semantic segmentation, background/sky/ground): top half sky, bottom half ground.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cvserve.models.importers import import_model
from cvserve.models.store import ModelStore
from tests.support.synthetic import constant_model, ultralytics_meta, yolo_head

DET_BOXES = {  # class -> (x1, y1, x2, y2, confidence) in 640x640 image pixels
    "person": (120, 100, 280, 340, 0.92),
    "car": (360, 360, 560, 480, 0.71),
    "dog": (460, 110, 540, 190, 0.35),
}
DET_CLASSES = ["person", "car", "dog"]
SEG_BOX = (100, 100, 300, 260, 0.88)
POSE_BOX = (200, 100, 440, 560, 0.9)


def _cxcywh(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


def _det_model(path: Path) -> Path:
    boxes, scores = [], []
    for ci, name in enumerate(DET_CLASSES):
        x1, y1, x2, y2, conf = DET_BOXES[name]
        boxes.append(_cxcywh(x1, y1, x2, y2))
        row = [0.0] * len(DET_CLASSES)
        row[ci] = conf
        scores.append(row)
    head = yolo_head(boxes, scores, candidates=64)
    return constant_model(path, [head], metadata=ultralytics_meta("detect", DET_CLASSES))


def _seg_model(path: Path) -> Path:
    x1, y1, x2, y2, conf = SEG_BOX
    coef = [[4.0] + [0.0] * 31]
    head = yolo_head([_cxcywh(x1, y1, x2, y2)], [[conf]], extra=coef, candidates=64)
    protos = np.zeros((1, 32, 160, 160), np.float32)
    protos[0, 0] = 4.0  # sigmoid(16) ~ 1 everywhere: the mask fills its box
    return constant_model(path, [head, protos], metadata=ultralytics_meta("segment", ["blob"]))


def pose_keypoints() -> list[tuple[float, float, float]]:
    x1, y1, x2, y2, _ = POSE_BOX
    pts = []
    for k in range(17):
        pts.append((x1 + 20 + (k % 4) * 60, y1 + 20 + (k // 4) * 90, 0.9 if k != 16 else 0.1))
    return pts


def _pose_model(path: Path) -> Path:
    x1, y1, x2, y2, conf = POSE_BOX
    extra = [v for kp in pose_keypoints() for v in kp]
    head = yolo_head([_cxcywh(x1, y1, x2, y2)], [[conf]], extra=[extra], candidates=64)
    meta = ultralytics_meta("pose", ["person"], kpt_shape="[17, 3]")
    return constant_model(path, [head], metadata=meta)


def _cls_model(path: Path) -> Path:
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    meta = ultralytics_meta("classify", ["cat", "dog", "bird"], imgsz=224)
    return constant_model(path, [probs], input_shape=(1, 3, 224, 224), metadata=meta)


def _sem_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    logits = np.zeros((1, 3, 160, 160), np.float32)
    logits[0, 1, :80] = 8.0  # sky on top
    logits[0, 2, 80:] = 8.0  # ground below
    constant_model(folder / "model.onnx", [logits])
    manifest = {
        "task": "semantic-segmentation",
        "family": "semantic",
        "weights": "model.onnx",
        "class_names": ["background", "sky", "ground"],
        "preprocess": {"resize": "letterbox", "size": [640, 640]},
        "postprocess": {"kind": "logits"},
        "source": {"notes": "synthetic semantic test model"},
    }
    (folder / "cvserve.json").write_text(json.dumps(manifest))
    return folder


def build_store(root: Path, work: Path, *, sam: bool = False) -> ModelStore:
    """Fill `root` with the synthetic models (built under `work`)."""
    work.mkdir(parents=True, exist_ok=True)
    store = ModelStore(root)
    import_model(_det_model(work / "det.onnx"), "det/1", store)
    import_model(_seg_model(work / "seg.onnx"), "seg/1", store)
    import_model(_pose_model(work / "pose.onnx"), "pose/1", store)
    import_model(_cls_model(work / "cls.onnx"), "cls/1", store)
    import_model(_sem_folder(work / "sem"), "sem/1", store)
    if sam:
        try:
            from tests.support.synthetic_sam import write_sam_model
        except ImportError:  # the SAM pair is optional
            pass
        else:
            write_sam_model(root, "sam/1", encoder_work=1)
    return store


def sample_image(width: int = 640, height: int = 640, seed: int = 0) -> np.ndarray:
    """An RGB image with some texture (smooth gradients plus noise), uint8."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [
            96 + 60 * np.sin(xs / 53.0),
            110 + 50 * np.cos(ys / 41.0),
            120 + 40 * np.sin((xs + ys) / 67.0),
        ],
        axis=-1,
    )
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
