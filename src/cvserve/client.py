"""A small Python SDK for a cvserve server (or anything speaking the hosted inference API).

    import cvserve

    client = cvserve.Client("http://127.0.0.1:9001", api_key="...")
    model = client.model("coco/1")
    result = model.predict("img.jpg", confidence=40, overlap=30)
    print(result.json())            # the server's JSON, seed field names
    result.save("prediction.jpg")   # boxes, labels, masks, keypoints or classes drawn
    detections = result.to_supervision()  # supervision.Detections, if installed

Names follow the official `roboflow` package where they overlap: `predict(image,
confidence=40, overlap=30, hosted=False)`, `.json()`, `.save(path)`. Images may be a path,
an http(s) URL, encoded bytes, a numpy array (OpenCV's BGR order, like the `roboflow`
package and `supervision`; pass `channels="rgb"` for RGB arrays) or a PIL image.

With `hosted=True` the URL is sent as `?image=` and the *server* fetches it (its SSRF
guard applies); with `hosted=False` a URL is downloaded by the client and uploaded, which
also works for hosts the server may not reach.

Errors raise `CVServeHTTPError` (with `.status` and `.message`); 429, 503 and 504 are
retried (honouring `Retry-After`) before giving up, as the official SDK does.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Client",
    "CVServeHTTPError",
    "Model",
    "PredictionResult",
    "SegmentResult",
    "prediction_from_json",
]

DEFAULT_URL = "http://127.0.0.1:9001"
RETRY_STATUSES = (429, 503, 504)
ImageLike = Any  # str | os.PathLike | bytes | np.ndarray | PIL.Image.Image


class CVServeHTTPError(Exception):
    """The server answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.body = body


# -- images --------------------------------------------------------------------------------
def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _encode_array(array: np.ndarray, channels: str) -> bytes:
    """An image array -> PNG (lossless) bytes; `channels` says how colour arrays are ordered."""
    import cv2

    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and channels.lower() == "rgb":
        code = cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        arr = cv2.cvtColor(arr, code)
    elif arr.ndim not in (2, 3):
        raise ValueError(f"expected an image array (H, W) or (H, W, C), got shape {arr.shape}")
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("could not encode the image array")
    return buf.tobytes()


def _encode_pil(image: Any) -> bytes:
    buf = io.BytesIO()
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _is_pil(value: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        return False
    return isinstance(value, Image.Image)


def _decode_rgb(data: bytes) -> np.ndarray:
    """Encoded bytes -> RGB uint8, EXIF-oriented exactly as the server sees them."""
    from cvserve.images import decode_image

    return decode_image(data)


# -- JSON -> typed results ----------------------------------------------------------------
def _rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string or list counts) -> full boolean mask (H, W)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        runs: list[int] = []
        s = counts.encode("ascii")
        p = 0
        while p < len(s):
            x, k, more = 0, 0, True
            while more:
                c = s[p] - 48
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p += 1
                k += 1
                if not more and (c & 0x10):
                    x |= -1 << (5 * k)
            if len(runs) > 2:
                x += runs[-2]
            runs.append(x)
    else:
        runs = [int(c) for c in counts]
    flat = np.zeros(height * width, dtype=bool)
    pos, value = 0, False
    for n in runs:
        if value:
            flat[pos : pos + n] = True
        pos += n
        value = not value
    return flat.reshape(width, height).T


def _polygon_mask(points: Sequence[dict[str, Any]], width: int, height: int) -> Any:
    import cv2

    from cvserve.results import BoxMask

    pts = np.array([[float(p["x"]), float(p["y"])] for p in points], np.float64)
    if len(pts) < 3:
        return BoxMask(0, 0, np.zeros((0, 0), bool))
    x0 = int(max(0, np.floor(pts[:, 0].min())))
    y0 = int(max(0, np.floor(pts[:, 1].min())))
    x1 = int(min(width, np.ceil(pts[:, 0].max()) + 1))
    y1 = int(min(height, np.ceil(pts[:, 1].max()) + 1))
    if x1 <= x0 or y1 <= y0:
        return BoxMask(0, 0, np.zeros((0, 0), bool))
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shifted = np.round(pts - [x0, y0]).astype(np.int32)
    cv2.fillPoly(canvas, [shifted], 1)
    return BoxMask(x0, y0, canvas.astype(bool))


def _box_mask_from_full(full: np.ndarray) -> Any:
    from cvserve.results import BoxMask

    ys, xs = np.nonzero(full)
    if len(xs) == 0:
        return BoxMask(0, 0, np.zeros((0, 0), bool))
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    return BoxMask(x0, y0, full[y0:y1, x0:x1].copy())


def _names_by_id(pairs: Iterable[tuple[int | None, str]]) -> tuple[list[str], dict[str, int]]:
    """Class names indexed by class id (ids missing from the answer get placeholders)."""
    by_id: dict[int, str] = {}
    unnamed: list[str] = []
    for cid, name in pairs:
        if cid is not None and cid >= 0:
            by_id.setdefault(int(cid), name)
        elif name not in unnamed:
            unnamed.append(name)
    size = max(by_id, default=-1) + 1
    names = [by_id.get(i, str(i)) for i in range(size)]
    for name in unnamed:
        if name not in names:
            names.append(name)
    return names, {n: i for i, n in enumerate(names)}


def _detections_from_json(body: dict[str, Any], width: int, height: int) -> Any:
    from cvserve.models.keypoint_sets import default_skeleton
    from cvserve.results import Detections

    preds = body.get("predictions") or []
    names, index = _names_by_id(
        (p.get("class_id") if isinstance(p.get("class_id"), int) else None, str(p.get("class")))
        for p in preds
    )
    n = len(preds)
    xyxy = np.zeros((n, 4), np.float32)
    conf = np.zeros((n,), np.float32)
    cls = np.zeros((n,), np.int64)
    masks = [] if any("points" in p or "rle" in p for p in preds) else None
    has_kps = any("keypoints" in p for p in preds)
    kp_count = 0
    kp_names: dict[int, str] = {}
    if has_kps:
        for p in preds:
            for k in p.get("keypoints") or []:
                kid = int(k.get("class_id", 0))
                kp_count = max(kp_count, kid + 1)
                kp_names.setdefault(kid, str(k.get("class_name", k.get("class", kid))))
    keypoints = np.zeros((n, kp_count, 3), np.float32) if has_kps else None
    for i, p in enumerate(preds):
        x, y, w, h = (float(p[k]) for k in ("x", "y", "width", "height"))
        xyxy[i] = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        conf[i] = float(p.get("confidence", 0.0))
        cls[i] = index[str(p.get("class"))]
        if masks is not None:
            if isinstance(p.get("rle"), dict):
                masks.append(_box_mask_from_full(_rle_decode(p["rle"])))
            else:
                masks.append(_polygon_mask(p.get("points") or [], width, height))
        if keypoints is not None:
            for k in p.get("keypoints") or []:
                kid = int(k.get("class_id", 0))
                keypoints[i, kid] = (float(k["x"]), float(k["y"]), float(k.get("confidence", 1)))
    return Detections(
        xyxy=xyxy,
        confidence=conf,
        class_id=cls,
        class_names=names,
        masks=masks,
        keypoints=keypoints,
        keypoint_names=[kp_names.get(i, str(i)) for i in range(kp_count)],
        skeleton=default_skeleton(kp_count),
    )


def _classification_from_json(body: dict[str, Any]) -> Any:
    from cvserve.results import Classification

    preds = body.get("predictions")
    if isinstance(preds, dict):  # multi-label
        items = [
            (v.get("class_id"), str(k), float(v.get("confidence", 0))) for k, v in preds.items()
        ]
        multilabel = True
    else:
        items = [
            (p.get("class_id"), str(p.get("class")), float(p.get("confidence", 0)))
            for p in preds or []
        ]
        multilabel = False
    names, index = _names_by_id((cid if isinstance(cid, int) else None, n) for cid, n, _ in items)
    scores = np.zeros((len(names),), np.float32)
    for _, name, c in items:
        scores[index[name]] = c
    return Classification(scores=scores, class_names=names, multilabel=multilabel)


def _png(b64: str) -> np.ndarray:
    import cv2

    raw = np.frombuffer(base64.b64decode(b64), np.uint8)
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("could not decode a mask PNG in the response")
    return img if img.ndim == 2 else img[:, :, 0]


def _semantic_from_json(body: dict[str, Any]) -> Any:
    from cvserve.results import SemanticMask

    class_map = _png(body["segmentation_mask"])
    if body.get("confidence_mask"):
        confidence = _png(body["confidence_mask"]).astype(np.float32) / 255.0
    else:
        confidence = np.ones(class_map.shape, np.float32)
    cmap = body.get("class_map") or {}
    size = max((int(k) for k in cmap), default=int(class_map.max(initial=0))) + 1
    names = [str(cmap.get(str(i), i)) for i in range(size)]
    return SemanticMask(class_map=class_map, confidence=confidence, class_names=names)


def task_of(body: dict[str, Any]) -> str:
    """Which task a hosted response answers, from its fields alone."""
    if "segmentation_mask" in body:
        return "semantic-segmentation"
    if body.get("prediction_type") == "ClassificationModel" or "top" in body:
        return "classification"
    preds = body.get("predictions")
    if isinstance(preds, dict) or "predicted_classes" in body:
        return "classification"
    preds = preds or []
    if any("keypoints" in p for p in preds):
        return "keypoint-detection"
    if any("points" in p or "rle" in p for p in preds):
        return "instance-segmentation"
    return "object-detection"


def prediction_from_json(body: dict[str, Any]) -> Any:
    """A hosted-API response -> `cvserve.results.Prediction` (for drawing or converting)."""
    from cvserve.results import Prediction

    image = body.get("image") or {}
    width, height = int(image.get("width", 0)), int(image.get("height", 0))
    task = task_of(body)
    if task == "semantic-segmentation":
        result = _semantic_from_json(body)
        height, width = result.class_map.shape[:2]
    elif task == "classification":
        result = _classification_from_json(body)
    else:
        result = _detections_from_json(body, width, height)
    return Prediction(result=result, width=width, height=height)


# -- results --------------------------------------------------------------------------------
class PredictionResult:
    """One image's answer: `.json()`, `.save(path)`, `.to_supervision()`, iteration over
    `predictions` (a list, or for multi-label classification the dict's items)."""

    def __init__(
        self,
        body: dict[str, Any],
        *,
        image: bytes | np.ndarray | str | None = None,
        client: Client | None = None,
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
        self._typed: Any = None

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

    def prediction(self) -> Any:
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
        rgb = _decode_rgb(src)
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
    """A promptable-segmentation (SAM) answer: polygons in image pixels, plus the score."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def json(self) -> dict[str, Any]:
        return self._body

    @property
    def score(self) -> float:
        segs = self._body.get("segments") or []
        return float(segs[0].get("score", 0.0)) if segs else 0.0

    @property
    def polygons(self) -> list[list[tuple[float, float]]]:
        out = []
        for seg in self._body.get("segments") or []:
            for poly in seg.get("polygons") or []:
                out.append([(float(v["x"]), float(v["y"])) for v in poly.get("vertices", [])])
        return out

    def mask(self) -> np.ndarray:
        """The segment as a full boolean mask (H, W)."""
        import cv2

        size = self._body.get("image") or {}
        h, w = int(size.get("height", 0)), int(size.get("width", 0))
        canvas = np.zeros((h, w), np.uint8)
        polys = [np.round(np.array(p)).astype(np.int32) for p in self.polygons if len(p) >= 3]
        if polys:
            cv2.fillPoly(canvas, polys, 1)
        return canvas.astype(bool)


# -- the client -----------------------------------------------------------------------------
class Model:
    """A model on the server, addressed as DATASET/VERSION."""

    def __init__(self, client: Client, model_id: str) -> None:
        parts = model_id.strip("/").split("/")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"model id must be DATASET/VERSION, got {model_id!r}")
        self.client = client
        self.id = "/".join(parts)
        self.dataset, self.version = parts

    def __repr__(self) -> str:
        return f"<cvserve.client.Model {self.id} at {self.client.url}>"

    def predict(
        self,
        image: ImageLike,
        hosted: bool = False,
        *,
        confidence: float | None = None,
        overlap: float | None = None,
        classes: str | Sequence[str] | None = None,
        max_detections: int | None = None,
        keypoint_confidence: float | None = None,
        mask_format: str | None = None,
        name: str | None = None,
        channels: str = "bgr",
        stroke: int | None = None,
        labels: bool = True,
    ) -> PredictionResult:
        """Run the model on one image. `confidence`/`overlap` are percentages (40) or
        fractions (0.4), as on the hosted API; `classes` keeps only those names. `hosted`
        comes second, as in the `roboflow` package; everything else is keyword-only.
        `stroke` and `labels` are the defaults of the result's `save()`."""
        query: dict[str, str] = {"format": "json"}
        for key, value in (
            ("confidence", confidence),
            ("overlap", overlap),
            ("max_detections", max_detections),
            ("keypoint_confidence", keypoint_confidence),
            ("response_mask_format", mask_format),
            ("name", name),
        ):
            if value is not None:
                query[key] = str(value)
        if classes:
            query["classes"] = classes if isinstance(classes, str) else ",".join(classes)
        attached: bytes | np.ndarray | str | None
        if hosted:
            if not _is_url(image):
                raise ValueError("hosted=True needs an http(s) URL for the image")
            query["image"] = str(image)
            body = self.client._request("POST", f"/{self.id}", params=query)
            attached = str(image)
        else:
            data, attached = self.client._image_bytes(image, channels)
            if name is None and isinstance(image, (str, os.PathLike)) and not _is_url(image):
                query["name"] = Path(image).name
            body = self.client._request(
                "POST",
                f"/{self.id}",
                params=query,
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
        fraction = None
        if confidence is not None:
            fraction = float(confidence) / 100.0 if float(confidence) >= 1 else float(confidence)
        return PredictionResult(
            body, image=attached, client=self.client, confidence=fraction, stroke=stroke,
            labels=labels,
        )  # fmt: skip

    def segment(
        self,
        image: ImageLike,
        points: Sequence[tuple[float, float] | tuple[float, float, int]] = (),
        box: tuple[float, float, float, float] | None = None,
        *,
        project: str = "sdk",
        channels: str = "bgr",
    ) -> SegmentResult:
        """Promptable segmentation (SAM models): points (x, y[, label]) and/or a box
        (x1, y1, x2, y2) in image pixels; label 1 foreground (default), 0 background."""
        data, _ = self.client._image_bytes(image, channels)
        payload: dict[str, Any] = {
            "image": base64.b64encode(data).decode("ascii"),
            "points": [
                {"x": float(p[0]), "y": float(p[1]), "label": int(p[2]) if len(p) > 2 else 1}
                for p in points
            ],
            "pixels": True,
            "model": self.id,
        }
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)
            payload["boundingBox"] = {"xMin": x1, "yMin": y1, "xMax": x2, "yMax": y2}
        body = self.client._request(
            "POST", f"/api/v1/projects/{project}/context/vision/segment/sync", json=payload
        )
        return SegmentResult(body)


class Client:
    """A keep-alive HTTP client for one cvserve server. Thread-safe; use as a context manager
    or call `close()`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        retries: int = 3,
        headers: dict[str, str] | None = None,
        verify: bool = True,
        transport: Any = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.api_key = api_key
        self.retries = max(0, int(retries))
        hdrs = {"User-Agent": _user_agent()}
        if api_key:
            hdrs["Authorization"] = f"Bearer {api_key}"
        hdrs.update(headers or {})
        self._http = httpx.Client(
            base_url=self.url,
            headers=hdrs,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_keepalive_connections=16, max_connections=32),
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"<cvserve.Client {self.url}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def model(self, model_id: str) -> Model:
        return Model(self, model_id)

    def models(self) -> list[dict[str, Any]]:
        """Every model in the server's store: model_id, task_type, classes, ..."""
        return list(self._request("GET", "/models").get("models", []))

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/info")

    def predict(self, model_id: str, image: ImageLike, **kwargs: Any) -> PredictionResult:
        return self.model(model_id).predict(image, **kwargs)

    # -- internals ---------------------------------------------------------------------
    def _image_bytes(self, image: ImageLike, channels: str) -> tuple[bytes, bytes | np.ndarray]:
        """(bytes to upload, what to keep for drawing later)."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            return data, data
        if isinstance(image, np.ndarray):
            data = _encode_array(image, channels)
            return data, data
        if _is_pil(image):
            data = _encode_pil(image)
            return data, data
        if _is_url(image):
            data = self._download(str(image))
            return data, data
        if isinstance(image, (str, os.PathLike)):
            path = Path(image).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no such image file: {path}")
            data = path.read_bytes()
            return data, data
        raise TypeError(
            f"unsupported image type {type(image).__name__}: give a path, URL, bytes, "
            "numpy array or PIL image"
        )

    def _download(self, url: str) -> bytes:
        import httpx

        try:
            r = httpx.get(url, follow_redirects=True, timeout=self._http.timeout)
        except httpx.HTTPError as e:
            raise CVServeHTTPError(0, f"could not download {url}: {e}") from e
        if r.status_code >= 400:
            raise CVServeHTTPError(r.status_code, f"could not download {url}")
        return r.content

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        attempt = 0
        while True:
            try:
                r = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException as e:
                raise CVServeHTTPError(0, f"request to {self.url}{path} timed out: {e}") from e
            except httpx.TransportError as e:
                if attempt < self.retries and isinstance(e, httpx.ConnectError):
                    attempt += 1
                    time.sleep(min(2.0, 0.2 * 2**attempt))
                    continue
                raise CVServeHTTPError(0, f"cannot reach {self.url}: {e}") from e
            if r.status_code in RETRY_STATUSES and attempt < self.retries:
                attempt += 1
                time.sleep(_retry_delay(r, attempt))
                continue
            if r.status_code >= 400:
                raise _http_error(r)
            if r.headers.get("content-type", "").startswith("application/json"):
                return r.json()
            return r.content


def _retry_delay(response: Any, attempt: int) -> float:
    raw = response.headers.get("retry-after")
    try:
        if raw is not None:
            return max(0.0, min(10.0, float(raw)))
    except ValueError:
        pass
    return min(5.0, 0.25 * 2**attempt)


def _http_error(response: Any) -> CVServeHTTPError:
    body: Any = None
    message = response.reason_phrase or "error"
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            message = text[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            message = str(err["message"])
        elif "message" in body:
            message = str(body["message"])
        elif "Message" in body:
            message = str(body["Message"])
    return CVServeHTTPError(response.status_code, message, body)


def _user_agent() -> str:
    from cvserve import __version__

    return f"cvserve-python/{__version__}"
