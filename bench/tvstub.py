"""A minimal stand-in for torchvision, for Ultralytics in the tooling venv.

torchvision from PyPI does not import beside the local CPU build of torch
(`operator torchvision::nms does not exist`), and Ultralytics' predict path needs only
`ops.nms` and the four classification transforms. `install()` puts this stand-in in
sys.modules (and answers Ultralytics' version look-up) before Ultralytics is imported.
"""

from __future__ import annotations

import enum
import importlib.metadata
import sys
import types

VERSION = "0.28.0"


def _nms(boxes, scores, iou_threshold: float):
    import torch

    order = scores.argsort(descending=True)
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    keep = []
    alive = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1[i + 1 :])
        yy1 = torch.maximum(y1[i], y1[i + 1 :])
        xx2 = torch.minimum(x2[i], x2[i + 1 :])
        yy2 = torch.minimum(y2[i], y2[i + 1 :])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[i + 1 :] - inter).clamp(min=1e-9)
        alive[i + 1 :] &= iou <= iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.long)]


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Resize:
    """torchvision Resize(int | (h, w)) on PIL images (antialiased, as torchvision's PIL path)."""

    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size = size
        self.interpolation = interpolation

    def __call__(self, img):
        from PIL import Image

        filt = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[
            self.interpolation.value
        ]
        w, h = img.size
        if isinstance(self.size, int):
            if w <= h:
                nw, nh = self.size, int(self.size * h / w)
            else:
                nw, nh = int(self.size * w / h), self.size
        else:
            nh, nw = self.size
        return img.resize((nw, nh), filt)


class CenterCrop:
    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, img):
        w, h = img.size
        th, tw = self.size
        left, top = int(round((w - tw) / 2.0)), int(round((h - th) / 2.0))
        return img.crop((left, top, left + tw, top + th))


class ToTensor:
    def __call__(self, img):
        import numpy as np
        import torch

        arr = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, t):
        import torch

        mean = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
        return (t - mean) / std


def install() -> None:
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    tv.__version__ = VERSION
    ops = types.ModuleType("torchvision.ops")
    ops.nms = _nms
    transforms = types.ModuleType("torchvision.transforms")
    for obj in (InterpolationMode, Compose, Resize, CenterCrop, ToTensor, Normalize):
        setattr(transforms, obj.__name__, obj)
    tv.ops, tv.transforms = ops, transforms
    sys.modules.update(
        {"torchvision": tv, "torchvision.ops": ops, "torchvision.transforms": transforms}
    )
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        return VERSION if name == "torchvision" else real_version(name)

    importlib.metadata.version = version
