"""Labels stay readable where boxes overlap (issue 21, point 6): the coffee photo's
"cup 0.96" was drawn under "bowl 0.80". Each label lies inside the image and off the
others, the most confident is drawn last, in `format=image`, the SDK's `.save()` and
`cvserve predict --save-images` (all draw with cvserve.render.annotate)."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from cvserve.client.results import PredictionResult
from cvserve.render.annotate import Rect, annotate, color, detection_labels
from cvserve.results import Detections, Prediction
from tests.conftest import add_model, make_store
from tests.support.synthetic import constant_model, png_bytes, ultralytics_meta, yolo_head

W, H = 640, 480
NAMES = ["bowl", "cup", "spoon", "table"]
# The coffee photo's layout: a cup inside a bowl sharing its top-left corner; a spoon on
# the image's top edge, a table reaching the bottom-right corner, a box past the right edge.
BOXES = [
    ((60, 40, 600, 420), 0, 0.80),
    ((60, 40, 300, 250), 1, 0.96),
    ((62, 0, 200, 30), 2, 0.55),
    ((0, 300, 640, 480), 3, 0.70),
    ((560, 100, 660, 200), 2, 0.45),
]


def _detections() -> Detections:
    return Detections(
        xyxy=np.array([b for b, _, _ in BOXES], np.float32),
        confidence=np.array([c for _, _, c in BOXES], np.float32),
        class_id=np.array([k for _, k, _ in BOXES], np.int64),
        class_names=NAMES,
    )


def _inside(rect: Rect) -> bool:
    x0, y0, x1, y1 = rect
    return 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def _apart(a: Rect, b: Rect) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _assert_readable(img: np.ndarray, det: Detections, tolerance: int) -> None:
    """Every label's rectangle still shows its own colour (its fill, around white text):
    nothing was drawn over it."""
    for i, text, (x0, y0, x1, y1) in detection_labels(det, img.shape):
        patch = img[y0:y1, x0:x1].astype(int)
        fill = np.abs(patch - np.array(color(det.class_id[i]))).max(axis=2) <= tolerance
        assert fill.mean() > 0.5, (text, fill.mean())


def test_label_boxes_lie_inside_the_image_and_off_each_other() -> None:
    det = _detections()
    labels = detection_labels(det, (H, W, 3))
    assert [t for _, t, _ in labels][:2] == ["cup 0.96", "bowl 0.80"]  # most confident first
    rects = [r for _, _, r in labels]
    assert all(_inside(r) for r in rects), rects
    for a, b in combinations(rects, 2):
        assert _apart(a, b), (a, b)


def test_many_boxes_keep_labels_inside_the_image() -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(-50, 700, (40, 2))
    wh = rng.uniform(5, 300, (40, 2))
    det = Detections(
        xyxy=np.concatenate([xy, xy + wh], axis=1).astype(np.float32),
        confidence=rng.uniform(0.3, 1, 40).astype(np.float32),
        class_id=rng.integers(0, 4, 40),
        class_names=NAMES,
    )
    assert all(_inside(r) for _, _, r in detection_labels(det, (H, W, 3)))


def test_annotate_draws_every_label_readable_and_the_most_confident_last() -> None:
    det = _detections()
    img = annotate(np.full((H, W, 3), 40, np.uint8), Prediction(det, W, H),
                   stroke=3, labels=True)  # fmt: skip
    _assert_readable(img, det, tolerance=0)
    # Where the cup's and the bowl's boxes overlap, the cup's (0.96) stroke is on top.
    assert tuple(img[120, 61]) == color(1)


def test_sdk_save_draws_readable_labels(tmp_path: Path) -> None:
    det = _detections()
    body = {
        "image": {"width": W, "height": H},
        "predictions": [
            {"x": (x1 + x2) / 2, "y": (y1 + y2) / 2, "width": x2 - x1, "height": y2 - y1,
             "class": NAMES[k], "class_id": k, "confidence": c}
            for (x1, y1, x2, y2), k, c in BOXES
        ],
    }  # fmt: skip
    result = PredictionResult(body, image=png_bytes(np.full((H, W, 3), 40, np.uint8)), labels=True)
    out = result.save(tmp_path / "prediction.png", stroke=3)
    drawn = np.asarray(Image.open(out).convert("RGB"))
    _assert_readable(drawn, result.prediction().result, tolerance=0)  # type: ignore[arg-type]
    assert isinstance(det, Detections)


def test_format_image_labels_readable(tmp_path: Path, make_client) -> None:  # noqa: ANN001
    """The server's annotated JPEG: the cup-in-a-bowl boxes from a real ONNX model."""
    store = make_store(tmp_path)
    boxes = [b for b, _, _ in BOXES[:2]]
    scores = [[0.80, 0.0], [0.0, 0.96]]
    # Letterbox 640 of a 640x480 image: scale 1, 80 rows of padding on top.
    head = yolo_head([((x1 + x2) / 2, (y1 + y2) / 2 + 80, x2 - x1, y2 - y1)
                      for x1, y1, x2, y2 in boxes], scores, candidates=8)  # fmt: skip
    meta = ultralytics_meta("detect", ["bowl", "cup"])
    add_model(store, "det/1", constant_model(tmp_path / "d.onnx", [head], metadata=meta))
    client = make_client(store)
    image = png_bytes(np.full((H, W, 3), 40, np.uint8))
    r = client.post("/det/1", params={"format": "image", "labels": "true", "stroke": 3},
                    content=image, headers={"Content-Type": "image/png"})  # fmt: skip
    assert r.status_code == 200, r.text
    drawn = simplejpeg.decode_jpeg(r.content, colorspace="RGB")
    json_body = client.post("/det/1", content=image, headers={"Content-Type": "image/png"}).json()
    assert sorted(p["class"] for p in json_body["predictions"]) == ["bowl", "cup"]
    det = Detections(
        xyxy=np.array(boxes, np.float32), confidence=np.array([0.80, 0.96], np.float32),
        class_id=np.array([0, 1]), class_names=["bowl", "cup"],
    )  # fmt: skip
    rects = [r for _, _, r in detection_labels(det, drawn.shape)]
    assert _apart(*rects) and all(_inside(r) for r in rects)
    _assert_readable(drawn, det, tolerance=60)  # JPEG


@pytest.mark.parametrize("n", [0, 1])
def test_no_or_one_detection(n: int) -> None:
    det = Detections(xyxy=np.array([[0, 0, W, H]] * n, np.float32).reshape(n, 4),
                     confidence=np.ones(n, np.float32), class_id=np.zeros(n, np.int64),
                     class_names=NAMES)  # fmt: skip
    labels = detection_labels(det, (H, W, 3))
    assert len(labels) == n and all(_inside(r) for _, _, r in labels)
