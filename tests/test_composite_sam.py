"""The composite (detector boxes prompting SAM): all boxes of an image in one `segment_boxes`
call, spread over the decoder lanes, give exactly the masks of one `segment` per box."""

from __future__ import annotations

import numpy as np
import pytest

from cvserve.models.base import InferParams, Task
from cvserve.models.composite import CompositeModel, box_mask
from cvserve.models.context import RunContext
from cvserve.models.importers import import_model
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.sam import SamModel
from cvserve.models.store import ModelStore
from tests.support.synthetic_sam import write_sam_model
from tests.support.synthetic_store import DET_CLASSES, _det_model, sample_image

SEG_ID = "seg-sam/1"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("composite")
    st = ModelStore(root / "models", RuntimeOptions(lanes=2, threads_per_lane=1, wide_threads=2))
    import_model(_det_model(root / "det.onnx"), "det/1", st)
    write_sam_model(st.root, "sam/1", encoder_work=1)
    folder = st.root / SEG_ID
    folder.mkdir(parents=True)
    Manifest(
        task=Task.INSTANCE_SEGMENTATION,
        family="composite",
        weights="",
        class_names=DET_CLASSES,
        postprocess={"detector": "det/1", "segmenter": "sam/1"},
    ).write(folder)
    return st


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for ma, mb in zip(a, b, strict=True):
        assert (ma.x0, ma.y0) == (mb.x0, mb.y0)
        assert ma.mask.dtype == mb.mask.dtype == bool
        np.testing.assert_array_equal(ma.mask, mb.mask)


@pytest.mark.parametrize("alone", [True, False])
def test_composite_masks_equal_one_segment_per_box(store: ModelStore, alone: bool) -> None:
    model = store.get(SEG_ID)
    assert isinstance(model, CompositeModel) and isinstance(model.segmenter, SamModel)
    assert model.segmenter.decoder_lanes == 2
    image = sample_image(640, 640)
    params = InferParams(confidence=0.3)  # person, car and dog: three boxes
    det = model.predict(image, params, RunContext(alone=lambda: alone)).result
    assert len(det) == 3 and det.masks is not None
    reference = model.per_box(model.segmenter.embed(image), det.xyxy)
    _same(det.masks, reference)
    assert all(m.mask.any() for m in det.masks)


def test_segment_boxes_odd_boxes_match_segment(store: ModelStore) -> None:
    """Fractional, clipped, degenerate and off-image boxes, more boxes than lanes."""
    sam = store.get("sam/1")
    assert isinstance(sam, SamModel)
    image = sample_image(451, 300)
    emb = sam.embed(image)
    rng = np.random.default_rng(1)
    boxes = [
        [10.3, 20.7, 200.2, 150.9],
        [-15.0, -3.5, 80.0, 500.0],  # clipped at three sides
        [300.0, 100.0, 300.4, 100.2],  # under one pixel
        [460.0, 10.0, 470.0, 20.0],  # right of the image: an empty crop
    ]
    for _ in range(5):
        x, y = rng.uniform(0, 451), rng.uniform(0, 300)
        boxes.append([x, y, x + rng.uniform(1, 200), y + rng.uniform(1, 150)])
    arr = np.array(boxes, np.float32)
    for alone in (True, False):
        got = sam.segment_boxes(emb, arr, RunContext(alone=lambda alone=alone: alone))
        want = [(box_mask(*_seg(sam, emb, b)), 0.9) for b in arr]
        _same([m for m, _ in got], [m for m, _ in want])
        assert [s for _, s in got] == pytest.approx([0.9] * len(arr), abs=1e-6)
    assert sam.segment_boxes(emb, np.zeros((0, 4), np.float32)) == []


def _seg(sam: SamModel, emb, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    return sam.segment(emb, box=box)[0], box


# -- the real coco-segment --------------------------------------------------------------
@pytest.mark.zoo
def test_real_coco_segment_masks_equal_one_segment_per_box() -> None:
    from cvserve.zoo.packages import PackageCache
    from cvserve.zoo.photos import photo
    from tests.support.zoo_cache import cache_root, zoo_store

    zoo = zoo_store("coco-detect", "mobilesam", "coco-segment")  # found, or pulled once
    store = ModelStore(zoo, RuntimeOptions(lanes=2, threads_per_lane=1, wide_threads=2))
    model = store.get("coco-segment/1")
    assert isinstance(model, CompositeModel)
    image = photo(PackageCache(cache_root() / "packages"), "street")  # person, horse, dog
    for alone in (True, False):
        ctx = RunContext(alone=lambda alone=alone: alone)
        det = model.predict(image, InferParams(), ctx).result
        assert len(det) >= 3 and det.masks is not None
        _same(det.masks, model.per_box(model.segmenter.embed(image), det.xyxy))


# -- the opt-in int8 encoder -------------------------------------------------------------
def test_int8_sam_and_composite(store: ModelStore) -> None:
    pytest.importorskip("onnx")
    from cvserve.tools.quantize import int8_id, quantize_model

    photos = [sample_image(320, 240, seed=s) for s in range(2)]
    report = quantize_model(store, "sam/1", photos, repeats=1)
    assert report.model_id == "sam/1-int8" and report.method == "dynamic"
    manifest = store.manifest("sam/1-int8")
    assert manifest.family == "sam" and "encoder only" in manifest.source["quantization"]
    # The synthetic decoder ignores the embedding: int8 masks are the float ones.
    assert report.agreement["box_mask_iou_min"] == 1.0
    assert report.int8_ms > 0 and report.float_ms > 0
    # The composite: same detector, int8 segmenter (already there: reused).
    comp = quantize_model(store, SEG_ID, [sample_image(640, 640)], repeats=1)
    assert comp.model_id == int8_id(SEG_ID)
    assert store.manifest(comp.model_id).postprocess["segmenter"] == "sam/1-int8"
    assert comp.agreement["instances"] == 2 and comp.agreement["instance_mask_iou_min"] == 1.0
    quant = store.get(comp.model_id)
    assert isinstance(quant, CompositeModel)
    assert quant.segmenter.info.model_id == "sam/1-int8"
    # The float composite is untouched and stays the default.
    assert store.manifest(SEG_ID).postprocess["segmenter"] == "sam/1"
