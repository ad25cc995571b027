"""Where predictions come from: the local store in this process, or a server via the SDK."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvserve.predict.options import PARAM_FIELDS, PredictError, PredictOptions
from cvserve.settings import Settings


class Backend:
    task: str
    class_names: list[str]

    def predict(self, path: Path, name: str) -> tuple[dict[str, Any], Callable[[Path], None]]:
        """(hosted JSON, a function writing the annotated image to a path)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _query(opts: PredictOptions) -> dict[str, str]:
    q: dict[str, str] = {}
    for name, attr in PARAM_FIELDS.items():
        value = getattr(opts, attr)
        if value is not None and value != "":
            q[name] = str(value)
    return q


def _write_image(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode an annotated {ext} image")
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


class LocalBackend(Backend):
    """Loads the model from the local store and runs it in this process, through the same
    engine path the server answers with (decode policy, predict, hosted JSON)."""

    def __init__(self, opts: PredictOptions, lanes: int, settings: Settings | None = None) -> None:
        import asyncio

        from cvserve.engine import LocalEngine
        from cvserve.errors import CVServeError, ModelNotFound
        from cvserve.models.store import ModelStore
        from cvserve.params import parse_hosted

        if settings is None:
            settings = Settings.from_env().with_overrides(models_dir=opts.models_dir)
        self.settings = settings
        threads = max(1, settings.cores // max(1, lanes))
        # This process's own layout (its lanes, all cores each), then only the engine.
        store = ModelStore(
            settings.store_dir,
            settings.runtime_options(lanes=lanes, threads_per_lane=threads, wide_threads=0),
        )
        self.engine = LocalEngine(settings, store)
        self.model_id = opts.model_id
        try:
            try:
                info = self.engine.model_info(opts.model_id)
            except ModelNotFound:
                have = ", ".join(i.model_id for i in self.engine.models()) or "none"
                raise PredictError(
                    f"model {opts.model_id} is not in the model store {settings.store_dir} "
                    f"(have: {have})"
                ) from None
            self.params, self.render = parse_hosted(_query(opts), info.task)
            if info.task.value == "promptable-segmentation":
                raise PredictError(f"{opts.model_id} is a promptable (SAM) model: it needs prompts")
            asyncio.run(self.engine.load(opts.model_id))  # a broken model fails here, once
        except CVServeError as e:
            self.engine.close()
            raise PredictError(e.message) from e
        except PredictError:
            self.engine.close()
            raise
        self.task = info.task.value
        self.class_names = list(info.class_names)

    def predict(self, path: Path, name: str) -> tuple[dict[str, Any], Callable[[Path], None]]:
        from dataclasses import replace

        from cvserve.encoders import HostedEncoder
        from cvserve.render.annotate import annotate

        render = replace(self.render, format="json", image_name=name)
        encoder = HostedEncoder(render, keep_pixels=True)
        rendered = self.engine.infer_now(self.model_id, path.read_bytes(), self.params, encoder)
        image, prediction = rendered.image, rendered.prediction
        assert image is not None and rendered.body is not None

        def save(dest: Path) -> None:
            stroke = max(2, round(max(image.shape[:2]) / 400))
            drawn = annotate(
                image, prediction, stroke=stroke, labels=True, confidence=self.params.confidence,
                keypoint_confidence=self.params.keypoint_confidence,
            )  # fmt: skip
            _write_image(dest, drawn)

        return rendered.body, save

    def close(self) -> None:
        self.engine.close()  # and its store


class RemoteBackend(Backend):
    """Sends each image to a server through the SDK (keep-alive, retries)."""

    def __init__(self, opts: PredictOptions) -> None:
        from cvserve.client import Client, CVServeHTTPError

        assert opts.url is not None
        self.client = Client(opts.url, api_key=opts.api_key, timeout=opts.timeout)
        self.opts = opts
        try:
            models = {m.get("model_id"): m for m in self.client.models()}
        except CVServeHTTPError as e:
            self.client.close()
            raise PredictError(f"server {opts.url}: {e.message}") from e
        info = models.get(opts.model_id)
        if info is None:
            self.client.close()
            raise PredictError(
                f"model {opts.model_id} is not served by {opts.url} "
                f"(have: {', '.join(sorted(str(k) for k in models)) or 'none'})"
            )
        self.task = str(info.get("task_type", ""))
        self.class_names = [str(c) for c in info.get("classes") or []]
        self.model = self.client.model(opts.model_id)

    def predict(self, path: Path, name: str) -> tuple[dict[str, Any], Callable[[Path], None]]:
        o = self.opts
        result = self.model.predict(
            path.read_bytes(),
            confidence=o.confidence,
            overlap=o.overlap,
            classes=o.classes,
            max_detections=o.max_detections,
            keypoint_confidence=o.keypoint_confidence,
            mask_format=o.mask_format,
            name=name,
        )

        def save(dest: Path) -> None:
            _write_image(dest, result.annotated())

        return result.json(), save

    def close(self) -> None:
        self.client.close()
