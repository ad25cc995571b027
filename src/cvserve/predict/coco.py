"""Hosted-API answers -> a COCO dataset (boxes, polygon or RLE masks, keypoints, scores)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _polygon_area(flat: list[float]) -> float:
    xs, ys = np.array(flat[0::2]), np.array(flat[1::2])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2.0)


def to_coco(rows: list[dict[str, Any]], class_names: list[str]) -> dict[str, Any]:
    """Hosted-API answers (with their `file`) -> a COCO dataset with scored annotations."""
    names = list(class_names)
    kp_names: dict[int, str] = {}
    for row in rows:
        for p in row.get("predictions") or []:
            if p.get("class") not in names:
                names.append(str(p.get("class")))
            for k in p.get("keypoints") or []:
                kp_names.setdefault(int(k.get("class_id", 0)), str(k.get("class_name", "")))
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    kp_count = max(kp_names, default=-1) + 1
    categories = []
    for n in names:
        cat: dict[str, Any] = {"id": cat_id[n], "name": n, "supercategory": "none"}
        if kp_count:
            from cvserve.keypoint_sets import default_skeleton

            cat["keypoints"] = [kp_names.get(i, str(i)) for i in range(kp_count)]
            cat["skeleton"] = [[a + 1, b + 1] for a, b in default_skeleton(kp_count)]
        categories.append(cat)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in rows:
        name = str(row["file"])
        if name in seen:
            continue
        seen.add(name)
        size = row.get("image") or {}
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": name,
                "width": int(size.get("width", 0)),
                "height": int(size.get("height", 0)),
            }
        )
        for p in row.get("predictions") or []:
            w, h = float(p["width"]), float(p["height"])
            x1, y1 = float(p["x"]) - w / 2, float(p["y"]) - h / 2
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_id[str(p.get("class"))],
                "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                "area": round(w * h, 2),
                "score": float(p.get("confidence", 0.0)),
                "iscrowd": 0,
            }
            if isinstance(p.get("rle"), dict):
                ann["segmentation"] = p["rle"]
                ann["area"] = _rle_area(p["rle"])
            elif p.get("points"):
                flat = [v for pt in p["points"] for v in (float(pt["x"]), float(pt["y"]))]
                if len(flat) >= 6:
                    ann["segmentation"] = [flat]
                    ann["area"] = round(_polygon_area(flat), 2)
            if "keypoints" in p:
                kps = [0.0] * (3 * kp_count)
                for k in p["keypoints"] or []:
                    i = int(k.get("class_id", 0))
                    kps[3 * i : 3 * i + 3] = [float(k["x"]), float(k["y"]), 2]
                ann["keypoints"] = kps
                ann["num_keypoints"] = len(p["keypoints"] or [])
            annotations.append(ann)
    return {
        "info": {"description": "cvserve predictions", "date_created": time.strftime("%Y-%m-%d")},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _rle_area(rle: dict[str, Any]) -> float:
    from cvserve.wire.hosted import rle_decode

    return float(rle_decode(rle).sum())
