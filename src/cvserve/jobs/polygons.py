"""A boolean mask -> the platform's `segments` JSON (outer outlines, normalised 0..1)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

SIMPLIFY_PX = 1.0  # Douglas-Peucker tolerance: drops staircase vertices, keeps the shape


def outlines(mask: np.ndarray, simplify_px: float = SIMPLIFY_PX) -> list[np.ndarray]:
    """Outer contours of a bool mask as float (K, 2) pixel polygons, largest area first."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    found: list[tuple[float, np.ndarray]] = []
    for c in contours:
        poly = cv2.approxPolyDP(c, simplify_px, True) if simplify_px > 0 else c
        if len(poly) < 3:
            poly = c
        if len(poly) < 3:  # a pixel or a thin line: outline its bounding rectangle
            x, y, w, h = cv2.boundingRect(c)
            poly = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        pts = poly.reshape(-1, 2).astype(np.float32)
        found.append((float(cv2.contourArea(c)) + len(c) * 1e-6, pts))
    found.sort(key=lambda a: -a[0])
    return [p for _, p in found]


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
