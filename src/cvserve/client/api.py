"""The SDK's face: `Client` (one server) and `Model` (DATASET/VERSION on it)."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvserve.client.inputs import ImageLike, image_bytes, is_url
from cvserve.client.results import PredictionResult, SegmentResult
from cvserve.client.streams import Streams
from cvserve.client.transport import DEFAULT_URL, Transport


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
            if not is_url(image):
                raise ValueError("hosted=True needs an http(s) URL for the image")
            query["image"] = str(image)
            body = self.client._request("POST", f"/{self.id}", params=query)
            attached = str(image)
        else:
            data, attached = self.client._image_bytes(image, channels)
            if name is None and isinstance(image, (str, os.PathLike)) and not is_url(image):
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
        normalised: bool = False,
        project: str = "sdk",
        channels: str = "bgr",
    ) -> SegmentResult:
        """Promptable segmentation (SAM models): points (x, y[, label]) and/or a box
        (x1, y1, x2, y2); label 1 foreground (default), 0 background. Coordinates are image
        pixels, or fractions 0..1 of the image's width and height with `normalised=True`
        (`(0.5, 0.5)` is the centre of any image). The result is in pixels either way."""
        data, _ = self.client._image_bytes(image, channels)
        payload: dict[str, Any] = {
            "image": base64.b64encode(data).decode("ascii"),
            "points": [
                {"x": float(p[0]), "y": float(p[1]), "label": int(p[2]) if len(p) > 2 else 1}
                for p in points
            ],
            "pixels": not normalised,
            "model": self.id,
        }
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)
            payload["boundingBox"] = {"xMin": x1, "yMin": y1, "xMax": x2, "yMax": y2}
        body = self.client._request(
            "POST", f"/api/v1/projects/{project}/context/vision/segment/sync", json=payload
        )
        return SegmentResult(body, normalised=normalised)


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
        self._transport = Transport(
            url, api_key, timeout, retries=retries, headers=headers, verify=verify,
            transport=transport,
        )  # fmt: skip
        self.url = self._transport.url
        self.api_key = api_key
        self._http = self._transport.http  # the httpx.Client (its pool is tested directly)

    @property
    def retries(self) -> int:
        return self._transport.retries

    def __repr__(self) -> str:
        return f"<cvserve.Client {self.url}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def model(self, model_id: str) -> Model:
        return Model(self, model_id)

    @property
    def streams(self) -> Streams:
        """The server's video streams: `client.streams.start(source, model_id, ...)`."""
        return Streams(self)

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
        return image_bytes(image, channels, self._download)

    def _download(self, url: str) -> bytes:
        return self._transport.download(url)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._transport.request(method, path, **kwargs)
