"""The hosted JSON both ways: typed results -> the server's encoder -> the SDK's decoder ->
the same values (to the wire's precision: 2 decimals for pixels, 4 for scores, 1/255 for a
semantic confidence, 1 decimal for polygon vertices). And the COCO RLE both ways against
pycocotools, the format's reference implementation."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cvserve.keypoint_sets import COCO_KEYPOINTS, COCO_SKELETON
from cvserve.params import RenderOptions
from cvserve.results import BoxMask, Classification, Detections, Prediction, SemanticMask
from cvserve.wire.hosted import prediction_from_json, prediction_json, rle_decode, task_of

coco_mask = pytest.importorskip("pycocotools.mask")
pytestmark = pytest.mark.filterwarnings(  # pycocotools' decode under numpy 2: not ours
    "ignore:__array__ implementation:DeprecationWarning"
)

W, H = 97, 61  # odd on purpose: column-major RLE and row-major arrays disagree visibly


def _round_trip(
    prediction: Prediction, *, mask_format: str = "polygon", confidence: float = 0.5
) -> tuple[dict, Prediction]:
    body = prediction_json(
        prediction, RenderOptions(mask_format=mask_format), confidence=confidence
    )
    body = json.loads(json.dumps(body))  # exactly what crosses the wire
    return body, prediction_from_json(body)


def _detections(n: int = 3, **extra: object) -> Detections:
    # Even coordinate sums: centre and size are whole pixels, so the box survives exactly.
    xyxy = np.array([[4, 6, 30, 40], [50, 2, 96, 60], [10, 20, 12, 22]], np.float32)[:n]
    return Detections(
        xyxy=xyxy,
        confidence=np.array([0.9, 0.4375, 0.25], np.float32)[:n],
        class_id=np.array([2, 0, 1], np.int64)[:n],
        class_names=["person", "car", "dog"],
        **extra,  # type: ignore[arg-type]  # masks/keypoints fields, by keyword
    )


def _assert_same_detections(got: Detections, want: Detections) -> None:
    np.testing.assert_array_equal(got.xyxy, want.xyxy)
    np.testing.assert_array_equal(got.confidence, want.confidence)
    assert [got.name_of(i) for i in range(len(got))] == [want.name_of(i) for i in range(len(want))]
    np.testing.assert_array_equal(got.class_id, want.class_id)


def test_boxes_round_trip() -> None:
    det = _detections()
    body, back = _round_trip(Prediction(det, W, H))
    assert task_of(body) == "object-detection"
    assert (back.width, back.height) == (W, H)
    assert isinstance(back.result, Detections)
    _assert_same_detections(back.result, det)
    assert back.result.masks is None and back.result.keypoints is None


def test_fractional_boxes_round_trip_to_the_wires_precision() -> None:
    rng = np.random.default_rng(3)
    x1y1 = rng.uniform(0, 50, (20, 2))
    xyxy = np.concatenate([x1y1, x1y1 + rng.uniform(1, 40, (20, 2))], 1).astype(np.float32)
    det = Detections(
        xyxy=xyxy,
        confidence=rng.uniform(0, 1, 20).astype(np.float32),
        class_id=np.zeros(20, np.int64),
        class_names=["thing"],
    )
    _, back = _round_trip(Prediction(det, W, H))
    assert isinstance(back.result, Detections)
    # centre and size are each rounded to 0.01: a corner may move by 0.005 + 0.0025
    np.testing.assert_allclose(back.result.xyxy, xyxy, atol=0.0076)
    np.testing.assert_allclose(back.result.confidence, det.confidence, atol=5e-5)


def _disk(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _box_mask(full: np.ndarray) -> BoxMask:
    ys, xs = np.nonzero(full)
    x0, y0 = int(xs.min()), int(ys.min())
    return BoxMask(x0, y0, full[y0 : ys.max() + 1, x0 : xs.max() + 1].copy())


def _masks() -> list[np.ndarray]:
    rect = np.zeros((H, W), bool)
    rect[6:40, 4:30] = True
    disk = _disk(73.0, 31.0, 17.5)
    corner = np.zeros((H, W), bool)
    corner[20:, 10:] = True  # touches the last row and column
    return [rect, disk, corner]


def test_instance_masks_round_trip_as_rle_exactly() -> None:
    fulls = _masks()
    det = _detections(masks=[_box_mask(m) for m in fulls])
    body, back = _round_trip(Prediction(det, W, H), mask_format="rle")
    assert task_of(body) == "instance-segmentation"
    assert all(p["mask_format"] == "rle" and "points" in p for p in body["predictions"])
    assert isinstance(back.result, Detections) and back.result.masks is not None
    _assert_same_detections(back.result, det)
    for got, want in zip(back.result.masks, fulls, strict=True):
        np.testing.assert_array_equal(got.full(W, H), want)


def test_instance_masks_round_trip_as_polygons() -> None:
    fulls = _masks()
    det = _detections(masks=[_box_mask(m) for m in fulls])
    body, back = _round_trip(Prediction(det, W, H), mask_format="polygon")
    assert all("rle" not in p for p in body["predictions"])
    assert isinstance(back.result, Detections) and back.result.masks is not None
    _assert_same_detections(back.result, det)
    got = [m.full(W, H) for m in back.result.masks]
    # a rectangle's outline is its four corner pixels: filling them gives it back exactly
    np.testing.assert_array_equal(got[0], fulls[0])
    np.testing.assert_array_equal(got[2], fulls[2])
    inter, union = (got[1] & fulls[1]).sum(), (got[1] | fulls[1]).sum()
    assert inter / union > 0.95  # a disk: the outline runs through its boundary pixels


def test_empty_mask_round_trips_as_empty() -> None:
    det = _detections(1, masks=[BoxMask(0, 0, np.zeros((0, 0), bool))])
    for fmt in ("rle", "polygon"):
        _, back = _round_trip(Prediction(det, W, H), mask_format=fmt)
        assert isinstance(back.result, Detections) and back.result.masks is not None
        assert not back.result.masks[0].full(W, H).any()


def test_keypoints_round_trip() -> None:
    rng = np.random.default_rng(5)
    kps = np.zeros((2, 17, 3), np.float32)
    kps[..., 0] = rng.integers(0, W * 4, (2, 17)) / 4  # quarter pixels: exact at 2 decimals
    kps[..., 1] = rng.integers(0, H * 4, (2, 17)) / 4
    kps[..., 2] = rng.integers(0, 10_001, (2, 17)) / 10_000  # 4 decimals, like the wire
    det = _detections(
        2, keypoints=kps, keypoint_names=list(COCO_KEYPOINTS), skeleton=list(COCO_SKELETON)
    )
    body, back = _round_trip(Prediction(det, W, H))
    assert task_of(body) == "keypoint-detection"
    res = back.result
    assert isinstance(res, Detections) and res.keypoints is not None
    _assert_same_detections(res, det)
    np.testing.assert_array_equal(res.keypoints, kps)
    assert res.keypoint_names == COCO_KEYPOINTS
    assert res.skeleton == COCO_SKELETON


def test_single_label_classification_round_trip() -> None:
    cls = Classification(np.array([0.1, 0.7, 0.15, 0.05], np.float32), ["a", "b", "c", "d"])
    body, back = _round_trip(Prediction(cls, W, H))
    assert task_of(body) == "classification" and body["top"] == "b"
    res = back.result
    assert isinstance(res, Classification) and not res.multilabel
    assert res.class_names == cls.class_names
    np.testing.assert_array_equal(res.scores, cls.scores)


def test_multi_label_classification_round_trip() -> None:
    cls = Classification(np.array([0.9, 0.2, 0.65], np.float32), ["x", "y", "z"], True)
    body, back = _round_trip(Prediction(cls, W, H), confidence=0.5)
    assert task_of(body) == "classification" and body["predicted_classes"] == ["x", "z"]
    res = back.result
    assert isinstance(res, Classification) and res.multilabel
    assert res.class_names == cls.class_names
    np.testing.assert_array_equal(res.scores, cls.scores)


def test_semantic_mask_round_trip() -> None:
    rng = np.random.default_rng(7)
    class_map = rng.integers(0, 4, (H, W)).astype(np.uint8)
    confidence = rng.uniform(0, 1, (H, W)).astype(np.float32)
    sem = SemanticMask(class_map, confidence, ["background", "sky", "road", "car"])
    body, back = _round_trip(Prediction(sem, W, H))
    assert task_of(body) == "semantic-segmentation"
    assert body["present_class_ids"] == [0, 1, 2, 3]
    res = back.result
    assert isinstance(res, SemanticMask) and (back.width, back.height) == (W, H)
    np.testing.assert_array_equal(res.class_map, class_map)
    assert res.class_names == sem.class_names
    np.testing.assert_allclose(res.confidence, confidence, atol=0.5 / 255 + 1e-6)


# -- COCO RLE against pycocotools ------------------------------------------------------------
def _rle_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    cases = []
    for h, w in [(1, 1), (1, 37), (37, 1), (17, 23), (61, 97), (101, 63)]:
        cases.append(rng.random((h, w)) > 0.5)  # many short runs
        cases.append(rng.random((h, w)) > 0.97)  # long zero runs, sparse ones
        cases.append(np.ones((h, w), bool))
        cases.append(np.zeros((h, w), bool))
        checker = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
        cases.append(checker)
        stripes = np.zeros((h, w), bool)
        stripes[:, ::3] = True  # whole columns: runs that cross column boundaries
        cases.append(stripes)
        last = np.zeros((h, w), bool)
        last[-1, -1] = True  # the very last pixel: no trailing zero run
        cases.append(last)
        cases.append(~last)  # starts with ones: a leading zero-length run
    big = np.zeros((700, 1001), bool)
    cv2.circle(big.view(np.uint8), (500, 350), 300, 1, -1)
    cases.append(big)  # counts past 2^15: multi-group, negative differences
    cases.append(~big)
    return cases


@pytest.mark.parametrize("index", range(len(_rle_cases())))
def test_server_rle_equals_pycocotools_and_sdk_decodes_what_pycocotools_does(index: int) -> None:
    full = _rle_cases()[index]
    h, w = full.shape
    want = coco_mask.encode(np.asfortranarray(full.astype(np.uint8)))
    # server -> wire: the encoder's counts are pycocotools' counts
    det = Detections(
        xyxy=np.array([[0, 0, w, h]], np.float32),
        confidence=np.array([1.0], np.float32),
        class_id=np.array([0], np.int64),
        class_names=["m"],
        masks=[BoxMask(0, 0, full)],
    )
    body = prediction_json(Prediction(det, w, h), RenderOptions(mask_format="rle"), confidence=0)
    rle = body["predictions"][0]["rle"]
    assert rle["size"] == [h, w] == list(want["size"])
    assert rle["counts"] == want["counts"].decode("ascii")
    # wire -> SDK: compressed counts decode as pycocotools decodes them
    reference = coco_mask.decode(want).astype(bool)
    np.testing.assert_array_equal(reference, full)
    np.testing.assert_array_equal(rle_decode({"size": [h, w], "counts": rle["counts"]}), reference)
    # and the uncompressed (list) form of the same runs
    runs = _runs(full)
    listed = coco_mask.frPyObjects({"size": [h, w], "counts": runs}, h, w)
    np.testing.assert_array_equal(coco_mask.decode(listed).astype(bool), reference)
    np.testing.assert_array_equal(rle_decode({"size": [h, w], "counts": runs}), reference)


def _runs(full: np.ndarray) -> list[int]:
    """Column-major run lengths, zeros first (COCO's uncompressed counts)."""
    flat = full.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs
