"""Well-known keypoint layouts (names and skeleton edges)."""

from __future__ import annotations

from typing import Any

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip

COCO_SKELETON = [
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
    (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
]  # fmt: skip


# RetinaFace's five landmarks, in the network's output order, named from the subject's point
# of view like COCO keypoints (point 0 is the eye on the image's left: the subject's right).
FACE_LANDMARKS = ["right_eye", "left_eye", "nose", "right_mouth", "left_mouth"]
FACE_SKELETON = [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)]

# Names and skeleton edges, as a family record fixes them (cvserve.models.registry).
KeypointLayout = tuple[list[str], list[tuple[int, int]]]
COCO_LAYOUT: KeypointLayout = (COCO_KEYPOINTS, COCO_SKELETON)
FACE_LAYOUT: KeypointLayout = (FACE_LANDMARKS, FACE_SKELETON)


def default_names(count: int) -> list[str]:
    if count == len(COCO_KEYPOINTS):
        return list(COCO_KEYPOINTS)
    return [str(i) for i in range(count)]


def default_skeleton(count: int) -> list[tuple[int, int]]:
    return list(COCO_SKELETON) if count == len(COCO_KEYPOINTS) else []


def keypoint_layout(
    fixed: KeypointLayout | None,
    names: list[str],
    skeleton: list[tuple[int, int]],
    postprocess: dict[str, Any],
) -> KeypointLayout:
    """The keypoint names and skeleton edges a model is drawn with: its manifest's own, else
    its family's fixed layout, else COCO's for 17 keypoints (and no edges otherwise)."""
    if fixed is not None:
        default_n, default_s = list(fixed[0]), list(fixed[1])
    else:
        count = int((postprocess.get("kpt_shape") or [0])[0])
        default_n, default_s = default_names(count), default_skeleton(count)
    edges = [(int(a), int(b)) for a, b in skeleton]
    return list(names) or default_n, edges or default_s
