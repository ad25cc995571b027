"""The fast preprocessing paths produce the reference bytes and values exactly:
- Pillow's antialiased resize split into row / column bands on two cores (and restricted to
  the centre crop's columns) equals one Pillow resize call followed by the crop;
- the per-channel value tables equal the reference float32 arithmetic for every level.
(Against Ultralytics itself: tests/test_ultralytics_parity.py::test_input_tensor_is_bit_exact.)
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cvserve.models.preprocess as pre
from cvserve.models.manifest import Preprocess


def _photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: every resize tap matters, edges included."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w, 1), yy * 255 / max(h, 1), (xx + yy) % 256], -1)
    return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "h,w,out_w,out_h",
    [
        (480, 640, 298, 224),  # the benchmark photo into a 224 classifier
        (1080, 1920, 398, 224),
        (1920, 1080, 224, 398),  # portrait
        (375, 500, 298, 224),
        (301, 999, 741, 223),  # odd sizes, mild shrink
        (300, 400, 800, 600),  # enlargement
        (600, 224, 224, 300),  # width unchanged: vertical pass only
        (224, 700, 350, 224),  # height unchanged: horizontal pass only
    ],
)
def test_split_resize_equals_one_pillow_call(h, w, out_w, out_h, monkeypatch):
    image = _photo_like(h, w, h * w)
    reference = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR))
    splits = []
    original = pre._in_halves

    def counting(work, size, axis):
        splits.append(axis)
        return original(work, size, axis)

    monkeypatch.setattr(pre, "_in_halves", counting)
    for cols in [(0, out_w), ((out_w - 224) // 2, (out_w - 224) // 2 + 224), (1, 2)]:
        if cols[1] > out_w:
            continue
        for alone in (True, False):
            got = pre._resize(image, out_w, out_h, "pil-bilinear", cols, split=alone)
            assert np.array_equal(got, reference[:, cols[0] : cols[1]]), (cols, alone)
    assert splits, "the split path never ran"


def test_small_images_and_busy_servers_do_not_split(monkeypatch):
    calls = []
    monkeypatch.setattr(pre, "_in_halves", lambda *a: calls.append(a))
    small = _photo_like(100, 120, 1)
    pre._resize(small, 60, 50, "pil-bilinear", split=True)
    big = _photo_like(480, 640, 2)
    pre._resize(big, 298, 224, "pil-bilinear", split=False)
    assert calls == []


@pytest.mark.parametrize("portrait", [False, True])
def test_center_crop_equals_resize_then_crop(portrait):
    """torchvision's Resize(224) + CenterCrop(224) on a PIL image, by hand."""
    h, w = (640, 480) if portrait else (480, 640)
    image = _photo_like(h, w, 7)
    spec = Preprocess(resize="center-crop", interpolation="pil-bilinear")
    crop, _ = pre.prepare(image, spec, 224, 224, split=True)
    new_w, new_h = (224, int(224 * h / w)) if portrait else (int(224 * w / h), 224)
    full = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    left, top = int(round((new_w - 224) / 2.0)), int(round((new_h - 224) / 2.0))
    assert np.array_equal(crop, full[top : top + 224, left : left + 224])


@pytest.mark.parametrize(
    "spec",
    [
        Preprocess(),  # Ultralytics: im / 255
        Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),  # torchvision
        Preprocess(color="bgr", scale=1.0, mean=(104.0, 117.0, 123.0)),  # RetinaFace-style
        Preprocess(scale=1.0 / 127.5, mean=(1.0, 1.0, 1.0)),  # [-1, 1]
    ],
)
def test_tensor_values_are_the_reference_arithmetic(spec):
    levels = np.arange(256, dtype=np.uint8)
    image = np.stack([levels, levels[::-1], np.roll(levels, 77)], -1).reshape(16, 16, 3)
    got = pre.to_tensor(image, spec)
    src = image[..., ::-1] if spec.color == "bgr" else image
    want = np.empty((1, 3, 16, 16), np.float32)
    for c in range(3):
        v = src[..., c].astype(np.float32)
        if spec.scale == 1.0 / 255.0:
            v = v / np.float32(255.0)  # torch: img.float().div(255)
        elif spec.scale != 1.0:
            v = v * np.float32(spec.scale)
        v = v - np.float32(spec.mean[c])
        v = v / np.float32(spec.std[c])
        want[0, c] = v
    assert got.dtype == np.float32
    assert np.array_equal(got, want)
    # The general (NHWC) path uses the same tables.
    nhwc = pre.to_tensor(image, spec.model_copy(update={"layout": "nhwc"}))
    assert np.array_equal(nhwc[0].transpose(2, 0, 1), want[0])


@pytest.mark.parametrize(
    "h,w,in_w,in_h",
    [(480, 640, 640, 640), (1080, 1920, 640, 640), (640, 480, 640, 640), (37, 999, 320, 256),
     (640, 640, 640, 640), (1, 1, 64, 64), (300, 200, 1024, 1024)],
)  # fmt: skip
@pytest.mark.parametrize(
    "spec",
    [
        Preprocess(),
        Preprocess(color="bgr", scale=1.0, mean=(104.0, 117.0, 123.0), pad_value=0),
        Preprocess(pad_align="top-left", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ],
)
def test_one_pass_letterbox_tensor_equals_canvas_then_tensor(h, w, in_w, in_h, spec):
    image = _photo_like(h, w, h + w)
    want_pixels, want_t = pre.prepare(image, spec, in_w, in_h)
    want = pre.to_tensor(want_pixels, spec)
    got, got_t = pre.prepare_tensor(image, spec, in_w, in_h)
    assert got_t == want_t
    assert got.shape == want.shape == (1, 3, in_h, in_w)
    assert np.array_equal(got, want)
