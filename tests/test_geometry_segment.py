"""Instance segmentation: prototype masks with exactly known shapes, through letterbox.

The head [1, 4 + nc + 32, N] carries boxes and one-hot mask coefficients; the prototypes
[1, 32, 160, 160] hold signed distances to a disc and to a rectangle (in proto cells), so
each instance's mask is an analytic shape in image pixels, cropped to its box.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from cvserve.models.base import InferParams
from tests.conftest import add_model, hosted
from tests.support.synthetic import (
    constant_model,
    disc_proto,
    letterbox_reference,
    one_hot,
    png_bytes,
    rect_proto,
    seg_protos,
    ultralytics_meta,
    yolo_head,
)

NAMES = ["ball", "card"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _centres(width: int, height: int):
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    return xs, ys


class Scene:
    """Two instances in image pixels, and the model constants that produce them."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        r, left, top = letterbox_reference(width, height, 640, 640)
        self.r, self.left, self.top = r, left, top
        to_in = lambda x, y: (x * r + left, y * r + top)  # noqa: E731
        to_proto = lambda x, y: ((x * r + left) / 4, (y * r + top) / 4)  # noqa: E731
        s = min(width, height)
        # A disc, with a box that encloses it with margin: the mask is the whole disc.
        self.disc_c = (0.35 * width, 0.5 * height)
        self.disc_r = 0.3 * s
        cx, cy = self.disc_c
        rr = self.disc_r
        self.disc_box = (cx - rr - 10, cy - rr - 10, cx + rr + 10, cy + rr + 10)
        # A rectangle, with a box that cuts it: the mask is rectangle AND box.
        self.rect = (0.6 * width, 0.1 * height, 0.9 * width, 0.7 * height)
        self.rect_box = (0.7 * width, 0.3 * height, 0.95 * width, 0.9 * height)
        pc = to_proto(cx, cy)
        planes = [
            disc_proto((160, 160), pc, rr * r / 4),
            rect_proto((160, 160), (*to_proto(*self.rect[:2]), *to_proto(*self.rect[2:]))),
        ]
        boxes_in = []
        for x1, y1, x2, y2 in (self.disc_box, self.rect_box):
            (a, b), (c, d) = to_in(x1, y1), to_in(x2, y2)
            boxes_in.append(((a + c) / 2, (b + d) / 2, c - a, d - b))
        self.head = yolo_head(
            boxes_in, [[0.9, 0.0], [0.0, 0.8]], [one_hot(0), one_hot(1)], candidates=64
        )
        self.protos = seg_protos(planes)

    def in_box(self, box) -> np.ndarray:
        xs, ys = _centres(self.width, self.height)
        x1, y1, x2, y2 = box
        return (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)

    def disc_mask(self) -> np.ndarray:
        xs, ys = _centres(self.width, self.height)
        inside = np.hypot(xs - self.disc_c[0], ys - self.disc_c[1]) < self.disc_r
        return inside & self.in_box(self.disc_box)

    def rect_mask(self) -> np.ndarray:
        return self.in_box(self.rect) & self.in_box(self.rect_box)


def _install(tmp_path, store, scene: Scene, model_id="seg/1"):
    meta = ultralytics_meta("segment", NAMES)
    path = constant_model(tmp_path / "seg.onnx", [scene.head, scene.protos], metadata=meta)
    add_model(store, model_id, path)
    return model_id


def _fill(points, width, height) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    poly = np.array([[p["x"], p["y"]] for p in points], np.float64)
    cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], 1)
    return canvas.astype(bool)


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (480, 640)])
def test_polygons_enclose_the_analytic_masks(tmp_path, store, make_client, width, height):
    scene = Scene(width, height)
    _install(tmp_path, store, scene)
    client = make_client(store)
    body = hosted(client, "seg/1", png_bytes(np.zeros((height, width, 3), np.uint8)))
    assert body["image"] == {"width": width, "height": height}
    ball, card = body["predictions"]
    assert (ball["class"], card["class"]) == ("ball", "card")
    assert ball["mask_format"] == "polygon" and "rle" not in ball
    for pred, want, box in (
        (ball, scene.disc_mask(), scene.disc_box),
        (card, scene.rect_mask(), scene.rect_box),
    ):
        got = _fill(pred["points"], width, height)
        assert _iou(got, want) >= 0.98, (pred["class"], _iou(got, want))
        pts = np.array([[p["x"], p["y"]] for p in pred["points"]])
        # cropped to the box (a pixel of slack for the outline of edge pixels)
        assert pts[:, 0].min() >= box[0] - 1 and pts[:, 0].max() <= box[2] + 1
        assert pts[:, 1].min() >= box[1] - 1 and pts[:, 1].max() <= box[3] + 1
        # the box reported is the box of the head, mapped back exactly
        assert pred["x"] == pytest.approx((box[0] + box[2]) / 2, abs=0.011)
        assert pred["width"] == pytest.approx(box[2] - box[0], abs=0.011)


def test_mask_is_cropped_to_its_box(tmp_path, store):
    """The rectangle prototype extends beyond the box: the mask must stop at the box."""
    scene = Scene(1280, 720)
    _install(tmp_path, store, scene)
    model = store.get("seg/1")
    pred = model.predict(np.zeros((720, 1280, 3), np.uint8), InferParams())
    det = pred.result
    disc = det.masks[0].full(1280, 720)
    card = det.masks[1].full(1280, 720)
    assert _iou(disc, scene.disc_mask()) >= 0.99
    assert _iou(card, scene.rect_mask()) >= 0.99
    uncropped = scene.in_box(scene.rect)
    assert uncropped.sum() > 1.3 * card.sum()  # the crop removed a large part
    x1, y1, x2, y2 = scene.rect_box
    ys, xs = np.nonzero(card)
    assert xs.min() >= np.floor(x1) and xs.max() < np.ceil(x2)
    assert ys.min() >= np.floor(y1) and ys.max() < np.ceil(y2)


def test_rle_decodes_to_the_same_mask(tmp_path, store, make_client):
    width, height = 1280, 720
    scene = Scene(width, height)
    _install(tmp_path, store, scene)
    client = make_client(store)
    img = png_bytes(np.zeros((height, width, 3), np.uint8))
    body = hosted(client, "seg/1", img, response_mask_format="rle")
    for pred, want in zip(body["predictions"], (scene.disc_mask(), scene.rect_mask()), strict=True):
        assert pred["mask_format"] == "rle"
        rle = pred["rle"]
        assert rle["size"] == [height, width]
        decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert decoded.shape == (height, width)
        decoded = decoded.astype(bool)
        assert _iou(decoded, want) >= 0.99
        # the polygon and the RLE describe the same region
        assert _iou(_fill(pred["points"], width, height), decoded) >= 0.98
        area = float(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()}))
        assert area == decoded.sum()
    # predictions other than the mask fields are identical in both formats
    poly = hosted(client, "seg/1", img)
    strip = lambda preds: [  # noqa: E731
        {k: v for k, v in p.items() if k not in ("rle", "mask_format", "detection_id")}
        for p in preds
    ]
    assert strip(poly["predictions"]) == strip(body["predictions"])


def test_rle_roundtrip_against_pycocotools_encoder():
    """Our RLE writer matches pycocotools' encoder byte for byte on awkward masks."""
    from cvserve.masks import rle_encode
    from cvserve.results import BoxMask

    rng = np.random.default_rng(1)
    for width, height, x0, y0, w, h in [
        (50, 40, 0, 0, 50, 40),  # box = whole image
        (50, 40, 10, 5, 7, 9),
        (50, 40, 43, 31, 7, 9),  # touching the bottom-right corner
        (31, 1, 3, 0, 5, 1),
    ]:
        m = rng.random((h, w)) > 0.5
        for fill in (m, np.ones_like(m), np.zeros_like(m)):
            box = BoxMask(x0, y0, fill)
            full = np.asfortranarray(box.full(width, height).astype(np.uint8))
            want = coco_mask.encode(full)
            got = rle_encode(box, width, height)
            assert got["size"] == [height, width]
            assert got["counts"] == want["counts"].decode()


def test_rle_matches_pycocotools_on_random_and_full_hd_masks():
    """Random boxes anywhere (touching the last row and column, empty, full), and blob
    masks on a 1920x1080 image: long runs, many counts, negative count differences."""
    import cv2

    from cvserve.masks import rle_encode
    from cvserve.results import BoxMask

    rng = np.random.default_rng(0)
    cases = []
    for trial in range(300):
        width, height = int(rng.integers(1, 80)), int(rng.integers(1, 60))
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(0, width - x0 + 1)), int(rng.integers(0, height - y0 + 1))
        fills = [rng.random((h, w)) > 0.5, np.ones((h, w), bool), np.zeros((h, w), bool)]
        cases.append((width, height, x0, y0, fills[trial % 3]))
    for _ in range(6):
        x0, y0 = int(rng.integers(0, 500)), int(rng.integers(0, 300))
        blobs = (rng.random((30, 40)) > 0.4).astype(np.uint8)
        cases.append((1920, 1080, x0, y0, cv2.resize(blobs, (1920 - x0, 1080 - y0)) > 0))
    cases.append((1920, 1080, 0, 0, np.ones((1080, 1920), bool)))
    for width, height, x0, y0, fill in cases:
        box = BoxMask(x0, y0, fill)
        want = coco_mask.encode(np.asfortranarray(box.full(width, height).astype(np.uint8)))
        assert rle_encode(box, width, height)["counts"] == want["counts"].decode()


def test_segment_confidence_and_filters(tmp_path, store, make_client):
    scene = Scene(640, 640)
    _install(tmp_path, store, scene)
    client = make_client(store)
    img = png_bytes(np.zeros((640, 640, 3), np.uint8))
    assert [p["class"] for p in hosted(client, "seg/1", img, classes="card")["predictions"]] == [
        "card"
    ]
    assert [p["class"] for p in hosted(client, "seg/1", img, confidence=85)["predictions"]] == [
        "ball"
    ]
    assert hosted(client, "seg/1", img, confidence=95)["predictions"] == []


def test_instance_past_the_image_edge_is_clipped(tmp_path, store, make_client):
    """A disc half outside a 1280 x 720 image (in the letterbox padding): box and mask stop
    at the image border, and the RLE still covers exactly the image."""
    width, height = 1280, 720
    r, left, top = letterbox_reference(width, height, 640, 640)
    centre, radius = (1250.0, 360.0), 100.0
    box = (1140.0, 250.0, 1360.0, 470.0)
    plane = disc_proto(
        (160, 160), ((centre[0] * r + left) / 4, (centre[1] * r + top) / 4), radius * r / 4
    )
    x1, y1, x2, y2 = (box[0] * r + left, box[1] * r + top, box[2] * r + left, box[3] * r + top)
    head = yolo_head(
        [((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)], [[0.9, 0.0]], [one_hot(0)], candidates=8
    )
    meta = ultralytics_meta("segment", NAMES)
    path = constant_model(tmp_path / "edge.onnx", [head, seg_protos([plane])], metadata=meta)
    add_model(store, "edge/1", path)
    client = make_client(store)
    img = png_bytes(np.zeros((height, width, 3), np.uint8))
    (pred,) = hosted(client, "edge/1", img, response_mask_format="rle")["predictions"]
    # the box is clipped to the image: x from 1140 to 1280
    assert pred["x"] - pred["width"] / 2 == pytest.approx(1140.0, abs=0.02)
    assert pred["x"] + pred["width"] / 2 == pytest.approx(1280.0, abs=0.02)
    xs, ys = _centres(width, height)
    want = np.hypot(xs - centre[0], ys - centre[1]) < radius
    rle = pred["rle"]
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    assert decoded.shape == (height, width)
    assert _iou(decoded, want) >= 0.98
    pts = np.array([[p["x"], p["y"]] for p in pred["points"]])
    assert pts[:, 0].max() <= width - 1 and pts[:, 0].min() >= 1140 - 1
    assert _iou(_fill(pred["points"], width, height), want) >= 0.98
