"""Well-known keypoint layouts (names and skeleton edges)."""

from __future__ import annotations

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


def default_names(count: int) -> list[str]:
    if count == len(COCO_KEYPOINTS):
        return list(COCO_KEYPOINTS)
    return [str(i) for i in range(count)]


def default_skeleton(count: int) -> list[tuple[int, int]]:
    return list(COCO_SKELETON) if count == len(COCO_KEYPOINTS) else []
