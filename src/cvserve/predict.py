"""Bulk prediction: `cvserve predict SOURCE --model ID` over an image, a folder or a glob.

In-process by default (the model is loaded from the local store and run here, producing
exactly the JSON the server would), or against a server with `url`. Outputs, under `out`:
- `json`: one `<relative path>.json` per image, written atomically (the hosted JSON);
- `jsonl`: `predictions.jsonl`, one line per image: `{"file": ..., <hosted JSON>}`;
- `coco`: `predictions.jsonl` as above plus `coco.json` (images, categories, annotations
  with `score`, boxes, polygon or RLE segmentations, keypoints), detection-like tasks only.
Re-running the same command resumes: images already in the output are skipped (a line cut
short by a crash is dropped). `--save-images` also writes annotated copies under
`images/`. Failures are listed in `failures.jsonl` and retried by the next run.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FORMATS = ("json", "jsonl", "coco")
JSONL_NAME = "predictions.jsonl"
COCO_NAME = "coco.json"
FAILURES_NAME = "failures.jsonl"
IMAGES_DIR = "images"
DETECTION_TASKS = ("object-detection", "instance-segmentation", "keypoint-detection")
_SAVE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class PredictError(Exception):
    """A problem with the command itself (bad source, unknown model, wrong format)."""


@dataclass
class PredictOptions:
    source: str
    model_id: str
    out: Path = Path("predictions")
    format: str = "json"
    save_images: bool = False
    url: str | None = None
    api_key: str | None = None
    confidence: float | None = None
    overlap: float | None = None
    classes: str | None = None
    max_detections: int | None = None
    keypoint_confidence: float | None = None
    mask_format: str | None = None
    concurrency: int | None = None
    models_dir: Path | None = None
    timeout: float = 120.0


@dataclass
class Summary:
    model_id: str
    task: str
    found: int = 0
    skipped: int = 0
    done: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    per_class: Counter = field(default_factory=Counter)
    detections: int = 0
    elapsed_s: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


# -- finding images ------------------------------------------------------------------------
def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def find_images(source: str, exclude: Path | None = None) -> list[tuple[Path, str]]:
    """(path, name relative to the source root) for every image, sorted by name.

    SOURCE is an image file, a folder (searched recursively, hidden entries skipped) or a
    glob pattern (`**` recurses); files under `exclude` (the output folder) are left out.
    """
    excluded = exclude.resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []
    if glob.has_magic(source):
        parts = Path(source).parts
        root_parts = []
        for part in parts:
            if glob.has_magic(part):
                break
            root_parts.append(part)
        root = Path(*root_parts) if root_parts else Path(".")
        for name in glob.glob(source, recursive=True):
            path = Path(name)
            if _is_image(path) and not _inside(path, excluded):
                found.append((path, path.relative_to(root).as_posix()))
    else:
        src = Path(source).expanduser()
        if src.is_dir():
            for dirpath, dirnames, filenames in os.walk(src):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fname in filenames:
                    path = Path(dirpath) / fname
                    if fname.startswith(".") or not _is_image(path) or _inside(path, excluded):
                        continue
                    found.append((path, path.relative_to(src).as_posix()))
        elif src.is_file():
            found.append((src, src.name))
        else:
            raise PredictError(f"{source}: no such file or folder")
    found.sort(key=lambda t: t[1])
    return found


# -- backends: where predictions come from --------------------------------------------------
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
    for key, value in (
        ("confidence", opts.confidence),
        ("overlap", opts.overlap),
        ("max_detections", opts.max_detections),
        ("keypoint_confidence", opts.keypoint_confidence),
        ("response_mask_format", opts.mask_format),
        ("classes", opts.classes),
    ):
        if value is not None and value != "":
            q[key] = str(value)
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
    """Loads the model from the local store and runs it in this process."""

    def __init__(self, opts: PredictOptions, lanes: int) -> None:
        from cvserve.errors import CVServeError
        from cvserve.models.runtime import RuntimeOptions
        from cvserve.models.store import ModelStore
        from cvserve.params import RenderOptions, parse_hosted
        from cvserve.settings import Settings

        settings = Settings.from_env().with_overrides(models_dir=opts.models_dir)
        self.settings = settings
        threads = max(1, settings.cores // max(1, lanes))
        self.store = ModelStore(
            settings.store_dir, RuntimeOptions(lanes=lanes, threads_per_lane=threads)
        )
        try:
            if not self.store.exists(opts.model_id):
                raise PredictError(
                    f"model {opts.model_id} is not in the model store {settings.store_dir} "
                    f"(have: {', '.join(self.store.ids()) or 'none'})"
                )
            self.model = self.store.get(opts.model_id)
            self.params, render = parse_hosted(_query(opts), self.model.task)
        except CVServeError as e:
            raise PredictError(e.message) from e
        self.render = render
        self.render_options = RenderOptions
        self.task = self.model.task.value
        self.class_names = list(self.model.class_names)
        if self.task == "promptable-segmentation":
            raise PredictError(f"{opts.model_id} is a promptable (SAM) model: it needs prompts")

    def predict(self, path: Path, name: str) -> tuple[dict[str, Any], Callable[[Path], None]]:
        from cvserve.images import decode_image
        from cvserve.render.annotate import annotate
        from cvserve.wire.hosted import prediction_json

        t0 = time.perf_counter()
        image = decode_image(
            path.read_bytes(),
            max_pixels=self.settings.max_image_pixels,
            max_side=self.settings.max_image_side,
        )
        prediction = self.model.predict(image, self.params)
        options = self.render_options(image_name=name, mask_format=self.render.mask_format)
        body = prediction_json(
            prediction,
            options,
            confidence=self.params.confidence,
            keypoint_confidence=self.params.keypoint_confidence,
            elapsed_s=time.perf_counter() - t0,
        )

        def save(dest: Path) -> None:
            stroke = max(2, round(max(image.shape[:2]) / 400))
            drawn = annotate(
                image, prediction, stroke=stroke, labels=True, confidence=self.params.confidence,
                keypoint_confidence=self.params.keypoint_confidence,
            )  # fmt: skip
            _write_image(dest, drawn)

        return body, save

    def close(self) -> None:
        self.store.close()


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


# -- outputs ---------------------------------------------------------------------------------
class Output:
    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)

    def done(self) -> set[str]:
        raise NotImplementedError

    def write(self, name: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self, backend: Backend) -> list[Path]:
        return []


def _dumps(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj)


class JsonFiles(Output):
    def _path(self, name: str) -> Path:
        return self.out / (name + ".json")

    def done(self) -> set[str]:
        found = set()
        for path in self.out.rglob("*.json"):
            rel = path.relative_to(self.out).as_posix()[: -len(".json")]
            if Path(rel).suffix.lower() in IMAGE_EXTENSIONS:
                found.add(rel)
        return found

    def write(self, name: str, body: dict[str, Any]) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(_dumps(body))
        os.replace(tmp, path)  # a file that exists is complete

    def finish(self, backend: Backend) -> list[Path]:
        return [self.out]


def read_jsonl(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Every complete line of a predictions.jsonl; with `repair`, cut a torn last line off."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, good_end, pos = [], 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: the writer died mid-line
        line = data[pos:nl]
        pos = nl + 1
        if not line.strip():
            good_end = pos
            continue
        try:
            row = json.loads(line)
        except ValueError:
            break
        if isinstance(row, dict) and "file" in row:
            rows.append(row)
        good_end = pos
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rows


class JsonLines(Output):
    def __init__(self, out: Path) -> None:
        super().__init__(out)
        self.path = out / JSONL_NAME
        self.rows = read_jsonl(self.path, repair=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in finish()

    def done(self) -> set[str]:
        return {str(r["file"]) for r in self.rows}

    def write(self, name: str, body: dict[str, Any]) -> None:
        self._fh.write(_dumps({"file": name, **body}) + b"\n")
        self._fh.flush()

    def finish(self, backend: Backend) -> list[Path]:
        self._fh.close()
        return [self.path]


class CocoOutput(JsonLines):
    def finish(self, backend: Backend) -> list[Path]:
        super().finish(backend)
        rows = read_jsonl(self.path)
        coco = to_coco(rows, backend.class_names)
        dest = self.out / COCO_NAME
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(_dumps(coco))
        os.replace(tmp, dest)
        return [self.path, dest]


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
            from cvserve.models.keypoint_sets import default_skeleton

            cat["keypoints"] = [kp_names.get(i, str(i)) for i in range(kp_count)]
            cat["skeleton"] = [[a + 1, b + 1] for a, b in default_skeleton(kp_count)]
        categories.append(cat)
    images, annotations = [], []
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
    from cvserve.client import _rle_decode

    return float(_rle_decode(rle).sum())


# -- running ---------------------------------------------------------------------------------
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
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Summary:
    """Predict every image of opts.source into opts.out. `on_start(total, skipped)` and
    `on_progress(failures_so_far)` (once per finished image) drive a progress display."""
    if opts.format not in FORMATS:
        raise PredictError(f"--format must be one of {', '.join(FORMATS)}, got {opts.format!r}")
    out = opts.out.expanduser()
    images = find_images(opts.source, exclude=out)
    if not images:
        raise PredictError(f"no images found in {opts.source}")
    remote = bool(opts.url)
    concurrency = opts.concurrency or (4 if remote else 2)
    backend: Backend = RemoteBackend(opts) if remote else LocalBackend(opts, lanes=1)
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


# -- terminal display (rich) -----------------------------------------------------------------
def run_with_progress(opts: PredictOptions, console: Any) -> Summary:
    """run_predict with a rich progress bar (rate and ETA) on `console`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} img/s" if speed else "-- img/s", style="progress.data.speed")

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    state: dict[str, Any] = {}

    def on_start(total: int, skipped: int) -> None:
        if skipped:
            console.print(f"resuming: {skipped} of {total} images already done")
        state["task"] = progress.add_task(opts.model_id, total=total - skipped, failed="")

    def on_progress(failed: int) -> None:
        progress.update(
            state["task"], advance=1, failed=f"[red]{failed} failed[/red]" if failed else ""
        )

    with progress:
        return run_predict(opts, on_start=on_start, on_progress=on_progress)


def print_summary(summary: Summary, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]{escape(summary.model_id)}[/bold] ({summary.task})")
    table = Table(show_header=True)
    table.add_column("class")
    table.add_column("count" if summary.detections else "images", justify="right")
    for name, n in summary.per_class.most_common():
        table.add_row(escape(name), str(n))
    if summary.per_class:
        console.print(table)
    lines = [
        f"images: {summary.found} found, {summary.done} predicted, {summary.skipped} already "
        f"done, {len(summary.failures)} failed",
    ]
    if summary.detections:
        lines.append(f"detections: {summary.detections}")
    lines.append(f"time: {summary.elapsed_s:.1f} s ({summary.rate:.1f} images/s)")
    for line in lines:
        console.print(line)
    for name, error in summary.failures[:10]:
        console.print(f"  [red]failed[/red] {escape(name)}: {escape(error)}", soft_wrap=True)
    if len(summary.failures) > 10:
        console.print(f"  ... and {len(summary.failures) - 10} more (see {FAILURES_NAME})")
    for path in summary.outputs:
        console.print(f"output: {escape(str(path))}", soft_wrap=True)
