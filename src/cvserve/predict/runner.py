"""run_predict: every image of a source through a backend into an output, bounded in flight."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from cvserve.predict.backends import Backend, LocalBackend, RemoteBackend
from cvserve.predict.options import (
    DETECTION_TASKS,
    FAILURES_NAME,
    FORMATS,
    IMAGES_DIR,
    PredictError,
    PredictOptions,
    Summary,
)
from cvserve.predict.outputs import CocoOutput, JsonFiles, JsonLines, Output
from cvserve.predict.sources import find_images
from cvserve.settings import Settings

_SAVE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _count(summary: Summary, body: dict[str, Any]) -> None:
    preds = body.get("predictions")
    if "segmentation_mask" in body:
        cmap = body.get("class_map") or {}
        for cid in body.get("present_class_ids") or []:
            if int(cid) != 0:
                summary.per_class[str(cmap.get(str(cid), cid))] += 1
    elif isinstance(preds, dict):  # multi-label classification
        for name in body.get("predicted_classes") or []:
            summary.per_class[str(name)] += 1
    elif "top" in body:
        if body.get("top"):
            summary.per_class[str(body["top"])] += 1
    else:
        for p in preds or []:
            summary.per_class[str(p.get("class"))] += 1
            summary.detections += 1


def _annotated_path(out: Path, name: str) -> Path:
    rel = Path(name)
    if rel.suffix.lower() not in _SAVE_EXTENSIONS:
        rel = rel.with_name(rel.name + ".jpg")
    return out / IMAGES_DIR / rel


def run_predict(
    opts: PredictOptions,
    settings: Settings | None = None,
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Summary:
    """Predict every image of opts.source into opts.out. `on_start(total, skipped)` and
    `on_progress(failures_so_far)` (once per finished image) drive a progress display.
    In-process runs use `settings` (default: from the environment, opts.models_dir over it)."""
    if opts.format not in FORMATS:
        raise PredictError(f"--format must be one of {', '.join(FORMATS)}, got {opts.format!r}")
    out = opts.out.expanduser()
    images = find_images(opts.source, exclude=out)
    if not images:
        raise PredictError(f"no images found in {opts.source}")
    remote = bool(opts.url)
    concurrency = opts.concurrency or (4 if remote else 2)
    backend: Backend = (
        RemoteBackend(opts) if remote else LocalBackend(opts, lanes=1, settings=settings)
    )
    try:
        if opts.format == "coco" and backend.task not in DETECTION_TASKS:
            raise PredictError(
                f"COCO output is for detection and segmentation models; {opts.model_id} is "
                f"{backend.task} (use --format json or jsonl)"
            )
        output: Output = {"json": JsonFiles, "jsonl": JsonLines, "coco": CocoOutput}[opts.format](
            out
        )
        summary = Summary(model_id=opts.model_id, task=backend.task, found=len(images))
        done = output.done()
        todo = [(p, n) for p, n in images if n not in done]
        summary.skipped = len(images) - len(todo)
        if on_start:
            on_start(len(images), summary.skipped)
        t0 = time.perf_counter()
        lock = threading.Lock()

        def work(path: Path, name: str) -> dict[str, Any]:
            body, save = backend.predict(path, name)
            if opts.save_images:
                save(_annotated_path(out, name))
            return body

        failures_path = out / FAILURES_NAME
        try:
            for name, result in _run_bounded(work, todo, concurrency):
                with lock:
                    if isinstance(result, BaseException):
                        summary.failures.append((name, _describe(result)))
                    else:
                        output.write(name, result)
                        summary.done += 1
                        _count(summary, result)
                if on_progress:
                    on_progress(len(summary.failures))
        finally:
            summary.elapsed_s = time.perf_counter() - t0
            summary.outputs = output.finish(backend)
            if summary.failures:
                failures_path.write_text(
                    "".join(json.dumps({"file": n, "error": e}) + "\n" for n, e in summary.failures)
                )
            elif failures_path.exists():
                failures_path.unlink()
        if opts.save_images:
            summary.outputs.append(out / IMAGES_DIR)
        return summary
    finally:
        backend.close()


def _describe(e: BaseException) -> str:
    from cvserve.client import CVServeHTTPError

    message = getattr(e, "message", None) or str(e) or type(e).__name__
    if isinstance(e, CVServeHTTPError) and e.status:
        return f"{message} (HTTP {e.status})"
    return message


def _run_bounded(
    fn: Callable[[Path, str], dict[str, Any]], items: list[tuple[Path, str]], workers: int
) -> Iterator[tuple[str, dict[str, Any] | BaseException]]:
    """fn over items on `workers` threads with at most 2*workers in flight; yields
    (name, result or exception) as they finish."""
    if not items:
        return
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cvserve-predict") as pool:
        pending: dict[Future, str] = {}

        def fill() -> None:
            while len(pending) < 2 * workers:
                try:
                    path, name = next(it)
                except StopIteration:
                    return
                pending[pool.submit(fn, path, name)] = name

        fill()
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    name = pending.pop(fut)
                    exc = fut.exception()
                    yield name, (exc if exc is not None else fut.result())
                fill()
        finally:
            for fut in pending:
                fut.cancel()
