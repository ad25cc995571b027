"""round4 replaces a Python round(v, 4) per class (1000 of them per ImageNet answer): it
must give the very same floats, sign of zero included, on the values where float64
arithmetic is most likely to go wrong -- the neighbours of every halfway point."""

from __future__ import annotations

import math

import numpy as np

from cvserve.wire.hosted import round4


def test_round4_equals_python_round_everywhere():
    rng = np.random.default_rng(0)
    halves = (np.arange(20001) + 0.5) / 1e4
    values = np.concatenate(
        [
            rng.random(200_000),
            rng.random(20_000) * 1e-3,
            -rng.random(20_000),
            halves,
            np.nextafter(halves, 2.0),
            np.nextafter(halves, -1.0),
            [0.0, -0.0, 1.0, -1e-9, 1e-300, 5e-5, 0.99995, 12345.67895],
            [float("nan"), float("inf"), float("-inf")],
        ]
    )
    got = round4(values)
    want = [round(float(v), 4) for v in values]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if math.isnan(w):
            assert math.isnan(g)
        else:
            assert g == w and math.copysign(1.0, g) == math.copysign(1.0, w)
    assert all(type(g) is float for g in got)


def test_round4_takes_float32_scores():
    scores = np.random.default_rng(1).random(1000).astype(np.float32)
    assert round4(scores) == [round(float(v), 4) for v in scores]
