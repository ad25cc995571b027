"""What the SDK hands back: one image's hosted answer (`PredictionResult`: the JSON, typed
results, drawing and saving, supervision) and a promptable-segmentation answer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cvserve.client.inputs import decode_rgb
from cvserve.results import Prediction
from cvserve.wire.hosted import prediction_from_json, task_of


class Downloader(Protocol):
    """What a result needs of its client: fetching the image it was made from by URL."""

    def _download(self, url: str) -> bytes: ...


class PredictionResult:
    """One image's answer: `.json()`, `.save(path)`, `.to_supervision()`, iteration over
    `predictions` (a list, or for multi-label classification the dict's items)."""

    def __init__(
        self,
        body: dict[str, Any],
        *,
        image: bytes | np.ndarray | str | None = None,
        client: Downloader | None = None,
        confidence: float | None = None,
        stroke: int | None = None,
        labels: bool = True,
    ) -> None:
        self._body = body
        self._image = image  # encoded bytes, an RGB array, or a URL fetched when needed
        self._client = client
        self._confidence = confidence
        self._stroke = stroke
        self._labels = labels
        self._typed: Prediction | None = None

    # the roboflow package's PredictionGroup names
    def json(self) -> dict[str, Any]:
        """The server's JSON for this image (a dict; `predictions`, `image`, `time`, ...)."""
        return self._body

    @property
    def predictions(self) -> list[dict[str, Any]]:
        preds = self._body.get("predictions")
        if isinstance(preds, dict):
            return [{"class": k, **v} for k, v in preds.items()]
        return list(preds or [])

    @property
    def task(self) -> str:
        return task_of(self._body)

    @property
    def width(self) -> int:
        return int((self._body.get("image") or {}).get("width", 0))

    @property
    def height(self) -> int:
        return int((self._body.get("image") or {}).get("height", 0))

    def __len__(self) -> int:
        return len(self.predictions)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.predictions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.predictions[i]

    def __repr__(self) -> str:
        return f"<PredictionResult {self.task} {self.width}x{self.height}: {len(self)} predictions>"

    def prediction(self) -> Prediction:
        """The answer as a typed `cvserve.results.Prediction` (boxes, masks, keypoints...)."""
        if self._typed is None:
            self._typed = prediction_from_json(self._body)
        return self._typed

    def image(self) -> np.ndarray:
        """The input image as RGB uint8 (downloaded first for a hosted URL)."""
        src = self._image
        if src is None:
            raise ValueError("this result has no image attached")
        if isinstance(src, str):
            client = self._client
            if client is None:
                raise ValueError("cannot fetch the image without a client")
            src = client._download(src)
            self._image = src
        if isinstance(src, np.ndarray):
            return src
        rgb = decode_rgb(src)
        self._image = rgb
        return rgb

    def annotated(self, *, stroke: int | None = None, labels: bool | None = None) -> np.ndarray:
        """The input image (RGB) with the predictions drawn over it."""
        from cvserve.render.annotate import annotate

        img = self.image()
        stroke = self._stroke if stroke is None else stroke
        labels = self._labels if labels is None else labels
        if stroke is None:
            stroke = max(2, round(max(img.shape[:2]) / 400))
        threshold = self._confidence if self._confidence is not None else 0.5
        return annotate(img, self.prediction(), stroke=stroke, labels=labels, confidence=threshold)

    def save(
        self, output_path: str | os.PathLike = "predictions.jpg", *, stroke: int | None = None,
        labels: bool | None = None,
    ) -> Path:  # fmt: skip
        """Write the annotated image (JPEG, PNG, WebP... by the file's extension)."""
        import cv2

        path = Path(output_path)
        img = self.annotated(stroke=stroke, labels=labels)
        ext = path.suffix.lower() or ".jpg"
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext in (".jpg", ".jpeg") else []
        ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError(f"cannot write an image with extension {ext!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.tobytes())
        return path

    def to_supervision(self) -> Any:
        """`supervision.Detections` for detection-like and semantic answers (one mask per
        present class), `supervision.Classifications` for classification."""
        try:
            import supervision as sv
        except ImportError as e:
            raise ImportError(
                "to_supervision() needs the supervision package: pip install supervision"
            ) from e
        from cvserve.results import Classification, Detections, SemanticMask

        pred = self.prediction()
        res = pred.result
        if isinstance(res, Classification):
            order = np.argsort(-res.scores, kind="stable")
            return sv.Classifications(class_id=order.astype(int), confidence=res.scores[order])
        if isinstance(res, SemanticMask):
            ids = [int(i) for i in np.unique(res.class_map) if i != 0]
            if not ids:
                return sv.Detections.empty()
            masks = np.stack([res.class_map == i for i in ids])
            boxes = []
            for m in masks:
                ys, xs = np.nonzero(m)
                boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            return sv.Detections(
                xyxy=np.array(boxes, np.float32),
                mask=masks,
                confidence=np.array([float(res.confidence[m].mean()) for m in masks], np.float32),
                class_id=np.array(ids, int),
                data={"class_name": np.array([res.class_names[i] for i in ids])},
            )
        assert isinstance(res, Detections)
        if len(res) == 0:
            return sv.Detections.empty()
        mask = None
        if res.masks is not None:
            mask = np.stack([m.full(pred.width, pred.height) for m in res.masks])
        data: dict[str, Any] = {
            "class_name": np.array([res.name_of(i) for i in range(len(res))]),
            "detection_id": np.array([p.get("detection_id", "") for p in self.predictions]),
        }
        if res.keypoints is not None:
            data["keypoints"] = res.keypoints
        return sv.Detections(
            xyxy=res.xyxy.astype(np.float32),
            mask=mask,
            confidence=res.confidence.astype(np.float32),
            class_id=res.class_id.astype(int),
            data=data,
        )


class SegmentResult:
    """A promptable-segmentation (SAM) answer: `polygons` in image pixels, `mask` the
    (H, W) boolean array they cover, and the `score`."""

    def __init__(self, body: dict[str, Any], *, normalised: bool = False) -> None:
        self._body = body
        self._normalised = normalised  # the server answered vertices in 0..1 of the image
        self._mask: np.ndarray | None = None

    def json(self) -> dict[str, Any]:
        return self._body

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image, in pixels."""
        size = self._body.get("image") or {}
        return int(size.get("width", 0)), int(size.get("height", 0))

    @property
    def score(self) -> float:
        segs = self._body.get("segments") or []
        return float(segs[0].get("score", 0.0)) if segs else 0.0

    @property
    def polygons(self) -> list[list[tuple[float, float]]]:
        """Each outline as [(x, y), ...] in image pixels."""
        sx, sy = self.size if self._normalised else (1, 1)
        out = []
        for seg in self._body.get("segments") or []:
            for poly in seg.get("polygons") or []:
                out.append(
                    [(float(v["x"]) * sx, float(v["y"]) * sy) for v in poly.get("vertices", [])]
                )
        return out

    @property
    def mask(self) -> np.ndarray:
        """The segment as a boolean array (H, W): `seg.mask.mean()`, `image[seg.mask]`."""
        if self._mask is None:
            import cv2

            w, h = self.size
            canvas = np.zeros((h, w), np.uint8)
            polys = [np.round(np.array(p)).astype(np.int32) for p in self.polygons if len(p) >= 3]
            if polys:
                cv2.fillPoly(canvas, polys, 1)
            self._mask = canvas.astype(bool)
        return self._mask
