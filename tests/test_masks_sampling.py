"""proto_masks decides whole blocks of pixels by the sign of the logits they mix and samples
only the blocks on a mask's edge. These tests hold it to the plain path that samples every
pixel: the same bits for every layout of the prototype grid and every kind of logit field."""

from __future__ import annotations

import numpy as np
import pytest

from cvserve.models.preprocess import Transform, letterbox_geometry
from cvserve.models.yolo_masks import proto_masks, sample_every_pixel


def _letterbox_transform(width: int, height: int, in_w: int, in_h: int) -> Transform:
    _, new_w, new_h, left, top = letterbox_geometry(width, height, in_w, in_h)
    return Transform(
        new_w / width,
        new_h / height,
        left,
        top,
        width,
        height,
        (left, top, left + new_w, top + new_h),
    )


def _protos(rng: np.random.Generator, texture: str, mh: int, mw: int) -> np.ndarray:
    """32 prototype planes: smooth blobs (real masks), white noise (edges everywhere), or
    mostly one sign with exact zeros and tiny values (the threshold's corner cases)."""
    if texture == "smooth":
        yy, xx = np.mgrid[0:mh, 0:mw].astype(np.float32)
        planes = []
        for _ in range(32):
            cy, cx = rng.uniform(0, mh), rng.uniform(0, mw)
            s = rng.uniform(4, 30)
            planes.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)))
        return np.stack(planes).astype(np.float32)
    if texture == "noise":
        return rng.standard_normal((32, mh, mw)).astype(np.float32)
    protos = np.zeros((32, mh, mw), np.float32)
    protos[0] = 1.0
    protos[1] = (rng.random((mh, mw)) < 0.05).astype(np.float32)  # holes of exact zeros
    protos[2] = rng.choice([0.0, 1e-45, 1e-38, 1e-30, 1e-20], size=(mh, mw)).astype(np.float32)
    return protos


@pytest.mark.parametrize(
    "width,height",
    [(640, 480), (1920, 1080), (500, 375), (333, 517), (1001, 77), (64, 64), (4032, 3024)],
)
@pytest.mark.parametrize("texture", ["smooth", "noise", "corners"])
def test_block_decisions_equal_sampling_every_pixel(width, height, texture):
    rng = np.random.default_rng(width * 7 + height + len(texture))
    in_w = in_h = 640
    transform = _letterbox_transform(width, height, in_w, in_h)
    protos = _protos(rng, texture, in_h // 4, in_w // 4)
    n = 12
    coefficients = rng.standard_normal((n, 32)).astype(np.float32)
    if texture == "corners":
        # Instances that are all inside, all outside, and on the edge of tiny values.
        coefficients[:] = 0.0
        coefficients[0, 0] = 1.0
        coefficients[1, 0] = -1.0
        coefficients[2, 1] = -1.0
        coefficients[2, 0] = 1.0
        coefficients[3:, 2] = 1.0
        coefficients[4:, 0] = rng.choice([0.0, -1e-30], size=n - 4)
    x1 = rng.uniform(-0.2 * width, width, n)
    y1 = rng.uniform(-0.2 * height, height, n)
    boxes = np.stack(
        [x1, y1, x1 + rng.uniform(0, 1.2 * width, n), y1 + rng.uniform(0, 1.2 * height, n)], 1
    ).astype(np.float32)
    boxes[-1] = [0, 0, width, height]  # the whole image
    boxes[-2] = [5.5, 5.5, 5.5, 9.0]  # empty
    reference = proto_masks(
        coefficients, protos, boxes, transform, (in_w, in_h), sample=sample_every_pixel
    )
    fast = proto_masks(coefficients, protos, boxes, transform, (in_w, in_h))
    assert len(fast) == len(reference) == n
    for got, want in zip(fast, reference, strict=True):
        assert (got.x0, got.y0) == (want.x0, want.y0)
        assert got.mask.shape == want.mask.shape
        assert got.mask.dtype == bool
        assert np.array_equal(got.mask, want.mask)
    # The fields are not degenerate: some instances have pixels both in and out.
    mixed = [m.mask.any() and not m.mask.all() for m in reference if m.mask.size]
    assert any(mixed) or texture == "corners"


def test_stretched_input_layout_also_matches():
    """A non-letterbox transform (content box at prototype resolution, f = 1)."""
    rng = np.random.default_rng(3)
    width, height = 800, 600
    transform = Transform(640 / width, 640 / height, 0, 0, width, height, (0, 0, 640, 640))
    protos = _protos(rng, "smooth", 160, 160)
    coefficients = rng.standard_normal((6, 32)).astype(np.float32)
    boxes = np.array([[0, 0, width, height], [100.2, 50.7, 700.1, 580.9]] * 3, np.float32)
    reference = proto_masks(
        coefficients, protos, boxes, transform, (640, 640), sample=sample_every_pixel
    )
    fast = proto_masks(coefficients, protos, boxes, transform, (640, 640))
    for got, want in zip(fast, reference, strict=True):
        assert np.array_equal(got.mask, want.mask)


def test_both_logit_strategies_give_each_window_its_own_logits():
    """Big windows read one product over the whole grid, small ones multiply their own
    window; either way instance i's window holds coef_i . protos at those cells (float64
    reference), and the two strategies agree."""
    from cvserve.models.yolo_masks import _logits

    rng = np.random.default_rng(11)
    protos = rng.standard_normal((32, 40, 56)).astype(np.float32)
    coefficients = rng.standard_normal((3, 32)).astype(np.float32)
    reference = np.einsum("nc,chw->nhw", coefficients.astype(np.float64), protos)
    big = [(0, 56, 0, 40), (3, 50, 7, 33), None]  # cover the grid: one product
    small = [(10, 14, 20, 23), (0, 2, 38, 40), None]  # tiny: per window
    for windows in (big, small):
        logits_of = _logits(coefficients, protos, windows)
        for i, w in enumerate(windows):
            if w is None:
                continue
            x0, x1, y0, y1 = w
            got = logits_of(i)
            assert got.shape == (y1 - y0, x1 - x0)
            np.testing.assert_allclose(got, reference[i, y0:y1, x0:x1], rtol=1e-5, atol=1e-4)
