"""A boolean mask -> the platform's `segments` JSON (outer outlines, normalised 0..1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cvserve.masks import outlines


def segments_json(
    mask: np.ndarray, score: float, *, normalise: bool = True
) -> list[dict[str, Any]]:
    """`[{score, polygons: [{vertices: [{x, y, confidence}], confidence}]}]`; [] for an empty mask.

    Vertices are normalised to 0..1 of the image (or left in pixels with normalise=False);
    SAM gives one score per mask, so it is every vertex's and polygon's confidence too.
    """
    h, w = mask.shape[:2]
    score = float(min(1.0, max(0.0, score)))
    polygons = []
    for pts in outlines(mask):
        if normalise:
            xs = np.clip(pts[:, 0] / w, 0.0, 1.0)
            ys = np.clip(pts[:, 1] / h, 0.0, 1.0)
        else:
            xs, ys = pts[:, 0], pts[:, 1]
        vertices = [
            {"x": round(float(x), 6), "y": round(float(y), 6), "confidence": score}
            for x, y in zip(xs.tolist(), ys.tolist(), strict=True)
        ]
        polygons.append({"vertices": vertices, "confidence": score})
    if not polygons:
        return []
    return [{"score": score, "polygons": polygons}]
