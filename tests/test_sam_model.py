"""The SAM family: preprocessing, prompt encoding, masks, the embedding cache, polygons."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cvserve.errors import BadRequest
from cvserve.jobs.polygons import segments_json
from cvserve.masks import outlines
from cvserve.models.base import InferParams
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.promptable import PromptableModel, PromptsRequired
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.sam import (
    PIXEL_MEAN,
    PIXEL_STD,
    SamEmbedding,
    SamModel,
    encoder_input,
    prompt_arrays,
    resized_shape,
)
from cvserve.models.store import ModelStore
from tests.support.synthetic_sam import MODEL_ID, expected_mask, write_sam_model

RADIUS = 20.0


@pytest.fixture(scope="module")
def sam_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sam-store")
    write_sam_model(root, MODEL_ID, encoder_work=1, radius=RADIUS)
    # Heavy encoder, light decoder: the embedding cache must show.
    write_sam_model(root, "heavy/1", encoder_work=48, radius=RADIUS)
    return root


def load(root: Path, model_id: str = MODEL_ID) -> SamModel:
    model = ModelStore(root, RuntimeOptions(lanes=1, threads_per_lane=2)).get(model_id)
    assert isinstance(model, SamModel)
    return model


def image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# -- preprocessing and prompts -----------------------------------------------------------
def test_resized_shape_follows_resize_longest_side() -> None:
    assert resized_shape(300, 451, 1024) == (681, 1024)
    assert resized_shape(1000, 500, 1024) == (1024, 512)
    assert resized_shape(1024, 1024, 1024) == (1024, 1024)


def test_encoder_input_normalises_then_pads_with_zeros() -> None:
    img = np.full((100, 200, 3), (10, 128, 250), np.uint8)
    x, nh, nw = encoder_input(img)
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == np.float32
    assert (nh, nw) == (512, 1024)
    want = (np.array([10, 128, 250], np.float32) - PIXEL_MEAN) / PIXEL_STD
    np.testing.assert_allclose(x[0, :, 100, 100], want, rtol=1e-5)
    assert not x[0, :, 512:, :].any()  # bottom padding is exactly zero


def test_prompt_arrays_pad_point_box_corners_and_scaling() -> None:
    emb = SamEmbedding(np.zeros((1, 256, 64, 64), np.float32), 300, 451, 681, 1024)
    coords, labels = prompt_arrays(emb, np.array([[451.0, 150.0]]), np.array([1]), None)
    assert labels.tolist() == [[1, -1]]  # padding point when there is no box
    np.testing.assert_allclose(coords[0, 0], [1024.0, 150 * 681 / 300], rtol=1e-6)
    assert coords.shape == (1, 2, 2) and coords.dtype == np.float32
    coords, labels = prompt_arrays(emb, None, None, np.array([10, 20, 30, 40]))
    assert labels.tolist() == [[2, 3]] and coords.shape == (1, 2, 2)
    with pytest.raises(BadRequest):
        prompt_arrays(emb, None, None, None)
    with pytest.raises(BadRequest):
        prompt_arrays(emb, np.array([[1.0, 2.0]]), np.array([1, 0]), None)


# -- the model ---------------------------------------------------------------------------
def test_point_and_box_masks_match_the_synthetic_decoder(sam_root: Path) -> None:
    model = load(sam_root)
    assert model.info.task.value == "promptable-segmentation" and model.input_size == 1024
    emb = model.embed(image(300, 451))
    assert emb.embedding.shape == (1, 256, 64, 64) and (emb.height, emb.width) == (300, 451)
    mask, score = model.segment(emb, np.array([[200.0, 150.0]]), np.array([1]))
    assert mask.shape == (300, 451) and mask.dtype == bool
    assert score == pytest.approx(0.9, abs=1e-6)
    assert iou(mask, expected_mask(300, 451, [(200, 150, 1)], radius=RADIUS)) > 0.97
    box = (50.0, 60.0, 250.0, 200.0)
    mask, _ = model.segment(emb, box=np.array(box))
    assert iou(mask, expected_mask(300, 451, box=box)) > 0.97
    # A background point paints nothing; the foreground one still does.
    pts = np.array([[10.0, 10.0], [400.0, 250.0]])
    mask, _ = model.segment(emb, pts, np.array([0, 1]))
    assert not mask[10, 10] and mask[250, 400]


def test_predict_needs_prompts(sam_root: Path) -> None:
    with pytest.raises(BadRequest):
        load(sam_root).predict(image(), InferParams())


def test_sam_is_a_promptable_model_whose_predict_refuses(sam_root: Path) -> None:
    model = load(sam_root)
    assert isinstance(model, PromptableModel)
    with pytest.raises(PromptsRequired, match="points or a box") as e:
        model.predict(image(), InferParams())
    assert e.value.status == 400 and "/" not in e.value.message.replace(MODEL_ID, "")


def test_second_prompt_on_the_same_image_is_5x_faster(sam_root: Path) -> None:
    model = load(sam_root, "heavy/1")
    model.embed(image(seed=9))  # warm up ORT (first-run allocations)
    pts = np.array([[100.0, 100.0]])
    decodes = []

    def prompt(key: str, img: np.ndarray) -> float:
        t = time.perf_counter()
        emb = model.embed_cached(key, lambda: img)
        model.segment(emb, pts, np.array([1]))
        return time.perf_counter() - t

    first = min(prompt(f"img{i}", image(seed=i)) for i in range(2))
    calls = []

    def loader() -> np.ndarray:
        calls.append(1)
        return image(seed=0)

    for _ in range(3):
        t = time.perf_counter()
        emb = model.embed_cached("img0", loader)
        model.segment(emb, pts, np.array([1]))
        decodes.append(time.perf_counter() - t)
    second = float(np.median(decodes))
    assert (model.cache.misses, model.cache.hits) == (2, 3)
    assert calls == []  # a hit never even decodes the image
    assert first >= 5 * second, f"first {first * 1000:.1f} ms, cached {second * 1000:.1f} ms"


def test_cache_is_lru_and_single_flight(sam_root: Path) -> None:
    model = load(sam_root)
    model.cache.capacity = 2
    for key in ("a", "b", "a", "c"):  # c evicts b, the least recently used
        model.embed_cached(key, image())
    assert "a" in model.cache and "c" in model.cache and "b" not in model.cache
    assert (model.cache.misses, model.cache.hits) == (3, 1)
    # Concurrent misses on one key run the encoder once.
    started = threading.Barrier(4)
    runs = []
    real = model.embed

    def slow_embed(img: np.ndarray, ctx: RunContext = IN_PROCESS) -> SamEmbedding:
        runs.append(1)
        time.sleep(0.2)
        return real(img, ctx)

    model.embed = slow_embed  # type: ignore[method-assign]

    def worker() -> None:
        started.wait()
        model.embed_cached("same", image())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 1 and "same" in model.cache


# -- polygons ----------------------------------------------------------------------------
def test_segments_json_outlines_normalised() -> None:
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:150] = True
    mask[80:90, 10:20] = True  # a smaller second piece
    (seg,) = segments_json(mask, 0.75)
    assert seg["score"] == 0.75 and len(seg["polygons"]) == 2
    big = seg["polygons"][0]["vertices"]  # largest first
    xs, ys = [v["x"] for v in big], [v["y"] for v in big]
    assert min(xs) == pytest.approx(0.25) and max(xs) == pytest.approx(149 / 200)
    assert min(ys) == pytest.approx(0.2) and max(ys) == pytest.approx(59 / 100)
    assert all(v["confidence"] == 0.75 for v in big)
    assert segments_json(np.zeros((5, 5), bool), 0.9) == []
    # A single pixel still gives a polygon (its pixel square).
    one = np.zeros((10, 10), bool)
    one[3, 4] = True
    (poly,) = outlines(one)
    assert len(poly) >= 3
    px = segments_json(mask, 2.0, normalise=False)[0]
    assert px["score"] == 1.0 and max(v["x"] for v in px["polygons"][0]["vertices"]) == 149


# -- the real MobileSAM ------------------------------------------------------------------
@pytest.mark.zoo
def test_real_mobilesam_point_on_the_cat_covers_the_cat() -> None:
    import cv2

    from cvserve.zoo.packages import PackageCache
    from cvserve.zoo.photos import photo
    from tests.support.zoo_cache import cache_root, zoo_store

    zoo = zoo_store("mobilesam")  # found, or pulled once into the test cache
    # Chelsea, from the scikit-image wheel in the zoo's package cache (not installed here).
    cat = photo(PackageCache(cache_root() / "packages"), "chelsea")  # 451 x 300, mostly cat
    model = load(zoo, "mobilesam/1")
    emb = model.embed(cat)
    mask, score = model.segment(emb, np.array([[250.0, 150.0]]), np.array([1]))
    assert score > 0.8
    (seg,) = segments_json(mask, score)
    filled = np.zeros(mask.shape, np.uint8)
    for poly in seg["polygons"]:
        pts = np.array([[v["x"] * 451, v["y"] * 300] for v in poly["vertices"]], np.int32)
        cv2.fillPoly(filled, [pts], 1)
    h, w = mask.shape
    assert 0.4 < filled.mean() < 0.95
    for x, y in ((250, 150), (170, 110), (315, 135), (260, 240), (100, 200)):  # cat
        assert filled[y, x], (x, y)
    for x, y in ((440, 100), (440, 200)):  # background on the right
        assert not filled[y, x], (x, y)
