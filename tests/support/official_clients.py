"""The official clients against a real `cvserve serve` process: models, server, venv.

- `build_client_store(root, work)` fills a model store with synthetic models for every
  task (fixed outputs, so predictions are known and identical whatever the pixels):
  det/1, seg/1, pose/1 (Ultralytics metadata), cls/1 (Ultralytics classify),
  mcls/1 (multi-label classifier) and sem/1 (semantic segmentation).
- `acquire_server()` / `release_server()` share one server process per pytest session
  between the test modules (refcounted): `cvserve serve --no-pull` on 127.0.0.1 with a
  free port, a temp store, one API key; ready once GET /healthz answers
  (tests.support.live_server.serve_subprocess).
- `clients_python()` is the interpreter of a separate venv under `.cache/clients-venv`
  holding `inference-sdk` and `roboflow` (tests/support/clients-requirements.txt). They cannot
  share the server's venv: inference-sdk pins numpy<2.4 and pillow<13 and both packages
  pull in opencv-python (non-headless, 4.x) beside the server's opencv-python-headless
  5.x -- two distributions writing the same `cv2` package -- plus scipy, matplotlib and
  av (~770 MB in all). `run_driver(jobs)` runs tests/support/client_driver.py there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.live_server import serve_subprocess, stop
from tests.support.synthetic import constant_model, ultralytics_meta, yolo_head

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_VENV = ROOT / ".cache" / "clients-venv"
CLIENTS_REQUIREMENTS = Path(__file__).with_name("clients-requirements.txt")
DRIVER = Path(__file__).with_name("client_driver.py")
API_KEY = "live-test-key"

# The test image: 960x720, letterboxed into 640x640 with gain 2/3 and 80 px of padding
# at the top, so model-input (x, y) is image (1.5 * x, 1.5 * (y - 80)).
IMAGE_SIZE = (960, 720)

DET_CLASSES = ["person", "car", "dog"]
# (cx, cy, w, h) in model-input pixels, class, score. Person B overlaps person A (IoU
# ~0.85, removed by NMS at overlap 30..80); car 2 overlaps person A but is another class;
# the dog is below the default 40 % threshold.
DET_CANDIDATES = [
    ((200, 240, 160, 240), "person", 0.92),
    ((210, 250, 160, 240), "person", 0.80),
    ((460, 420, 200, 120), "car", 0.71),
    ((220, 260, 150, 200), "car", 0.55),
    ((500, 200, 80, 80), "dog", 0.35),
]
SEG_CLASSES = ["blob", "disc"]
POSE_KPTS = 17


def _cxcywh_rows(cands):
    return [c[0] for c in cands]


def _det_model(path: Path) -> Path:
    scores = []
    for _, name, conf in DET_CANDIDATES:
        row = [0.0] * len(DET_CLASSES)
        row[DET_CLASSES.index(name)] = conf
        scores.append(row)
    head = yolo_head(_cxcywh_rows(DET_CANDIDATES), scores, candidates=256)
    return constant_model(path, [head], metadata=ultralytics_meta("detect", DET_CLASSES))


def _seg_model(path: Path) -> Path:
    # Proto cells are 4 input pixels. Plane 0: a rectangle inside box 1; plane 1: a disc.
    mh = mw = 160
    ys, xs = np.mgrid[0:mh, 0:mw].astype(np.float32) + 0.5
    rect = np.minimum.reduce([xs - 30, 70 - xs, ys - 40, 70 - ys])  # input (120,160)-(280,280)
    disc = 14.0 - np.hypot(xs - 120, ys - 100)  # input centre (480, 400), radius 56
    protos = np.zeros((1, 32, mh, mw), np.float32)
    protos[0, 0], protos[0, 1] = rect, disc
    boxes = [(200, 220, 200, 160), (480, 400, 128, 128)]
    scores = [[0.88, 0.0], [0.0, 0.77]]
    coef = [[1.0] + [0.0] * 31, [0.0, 1.0] + [0.0] * 30]
    head = yolo_head(boxes, scores, extra=coef, candidates=256)
    return constant_model(path, [head, protos], metadata=ultralytics_meta("segment", SEG_CLASSES))


def pose_people() -> list[tuple[tuple[float, float, float, float], float, list[float]]]:
    """Two people: (cx, cy, w, h), score, 17 x (x, y, conf) in model-input pixels."""
    people = []
    for i, (cx, conf) in enumerate(((200, 0.9), (470, 0.66))):
        kps: list[float] = []
        for k in range(POSE_KPTS):
            x = cx - 60 + (k % 4) * 40
            y = 140 + (k // 4) * 70
            kc = 0.95 if (k + i) % 5 else 0.2  # a few low-confidence keypoints
            kps += [x, y, kc]
        people.append(((cx, 300, 180, 340), conf, kps))
    return people


def _pose_model(path: Path) -> Path:
    people = pose_people()
    head = yolo_head(
        [p[0] for p in people], [[p[1]] for p in people], extra=[p[2] for p in people],
        candidates=256,
    )  # fmt: skip
    meta = ultralytics_meta("pose", ["person"], kpt_shape=f"[{POSE_KPTS}, 3]")
    return constant_model(path, [head], metadata=meta)


def _cls_model(path: Path) -> Path:
    probs = np.array([[0.1, 0.7, 0.2]], np.float32)
    meta = ultralytics_meta("classify", ["cat", "dog", "bird"], imgsz=224)
    return constant_model(path, [probs], input_shape=(1, 3, 224, 224), metadata=meta)


def _folder_model(folder: Path, outputs: list[np.ndarray], manifest: dict, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    constant_model(folder / "model.onnx", outputs, input_shape=(1, 3, size, size))
    (folder / "cvserve.json").write_text(json.dumps(manifest))
    return folder


def _mcls_folder(folder: Path) -> Path:
    logits = np.array([[2.0, -1.0, 0.5, -3.0]], np.float32)  # sigmoid .88 .27 .62 .05
    manifest = {
        "task": "classification",
        "family": "classifier",
        "weights": "model.onnx",
        "class_names": ["red", "green", "blue", "yellow"],
        "multilabel": True,
        "preprocess": {"resize": "stretch", "size": [224, 224]},
        "postprocess": {"activation": "sigmoid"},
    }
    return _folder_model(folder, [logits], manifest, 224)


def _sem_folder(folder: Path) -> Path:
    logits = np.zeros((1, 3, 160, 160), np.float32)
    logits[0, 1, :70] = 6.0  # sky at the top of the model input
    logits[0, 2, 90:] = 6.0  # ground at the bottom; background (all zeros) between
    manifest = {
        "task": "semantic-segmentation",
        "family": "semantic",
        "weights": "model.onnx",
        "class_names": ["background", "sky", "ground"],
        "preprocess": {"resize": "letterbox", "size": [640, 640]},
        "postprocess": {"kind": "logits"},
    }
    return _folder_model(folder, [logits], manifest, 640)


MODELS = {
    "det/1": "object-detection",
    "seg/1": "instance-segmentation",
    "pose/1": "keypoint-detection",
    "cls/1": "classification",
    "mcls/1": "classification",
    "sem/1": "semantic-segmentation",
}


def build_client_store(root: Path, work: Path) -> None:
    from cvserve.models.importers import import_model
    from cvserve.models.store import ModelStore

    work.mkdir(parents=True, exist_ok=True)
    store = ModelStore(root)
    import_model(_det_model(work / "det.onnx"), "det/1", store)
    import_model(_seg_model(work / "seg.onnx"), "seg/1", store)
    import_model(_pose_model(work / "pose.onnx"), "pose/1", store)
    import_model(_cls_model(work / "cls.onnx"), "cls/1", store)
    import_model(_mcls_folder(work / "mcls"), "mcls/1", store)
    import_model(_sem_folder(work / "sem"), "sem/1", store)


def write_test_images(folder: Path) -> dict[str, Path]:
    """The test image as PNG and JPEG (textured, RGB, 960x720)."""
    from PIL import Image

    w, h = IMAGE_SIZE
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack(
        [96 + 60 * np.sin(xs / 53.0), 110 + 50 * np.cos(ys / 41.0), 120 + 40 * np.sin((xs + ys) / 67.0)],
        axis=-1,
    )  # fmt: skip
    rgb += np.random.default_rng(0).normal(0, 6, rgb.shape)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    paths = {"png": folder / "scene.png", "jpg": folder / "scene.jpg"}
    img.save(paths["png"])
    img.save(paths["jpg"], quality=92)
    return paths


# -- the server process ----------------------------------------------------------------------


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    port: int
    api_key: str
    workdir: Path
    images: dict[str, Path]
    proc: subprocess.Popen

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def hosted(self, model_id: str, image: Path, **params: Any) -> dict[str, Any]:
        """The hosted route's answer: base64 body, form-urlencoded, as the SPEC's curl does."""
        import base64
        from urllib.parse import urlencode

        query = urlencode({"api_key": self.api_key, **{k: str(v) for k, v in params.items()}})
        req = urllib.request.Request(
            f"{self.url}/{model_id}?{query}",
            data=base64.b64encode(image.read_bytes()),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())


def start_server(workdir: Path) -> Server:
    models = workdir / "models"
    build_client_store(models, workdir / "build")
    images = write_test_images(workdir)
    proc, url = serve_subprocess(models, "--api-key", API_KEY, env={"CVSERVE_WORKERS": "1"})
    return Server(url, int(url.rsplit(":", 1)[1]), API_KEY, workdir, images, proc)


_lock = threading.Lock()
_shared: dict[str, Any] = {"server": None, "users": 0, "tmp": None}


def acquire_server() -> Server:
    """One server per test session, shared by every module that asks (refcounted)."""
    with _lock:
        if _shared["server"] is None:
            tmp = tempfile.TemporaryDirectory(prefix="cvserve-live-")
            _shared["tmp"] = tmp
            _shared["server"] = start_server(Path(tmp.name))
        _shared["users"] += 1
        return _shared["server"]


def release_server() -> None:
    with _lock:
        _shared["users"] -= 1
        if _shared["users"] > 0 or _shared["server"] is None:
            return
        stop(_shared["server"].proc)
        _shared["server"] = None
        with contextlib.suppress(OSError):
            _shared["tmp"].cleanup()
        _shared["tmp"] = None


# -- the clients' venv -----------------------------------------------------------------------


def _requirements_digest() -> str:
    return hashlib.sha256(CLIENTS_REQUIREMENTS.read_bytes()).hexdigest()[:16]


def clients_python(create: bool = True) -> Path | None:
    """The clients' interpreter; builds the venv when missing or stale (None if it can't)."""
    python = CLIENTS_VENV / "bin" / "python"
    marker = CLIENTS_VENV / ".requirements-digest"
    digest = _requirements_digest()
    if python.exists() and marker.exists() and marker.read_text().strip() == digest:
        return python
    if not create or _shared.get("venv_failed"):
        return None
    CLIENTS_VENV.parent.mkdir(parents=True, exist_ok=True)
    _shared["venv_failed"] = True  # until proven otherwise: try once per session
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CLIENTS_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(CLIENTS_REQUIREMENTS)],
            check=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    marker.write_text(digest + "\n")
    _shared["venv_failed"] = False
    return python


def run_driver(python: Path, jobs: list[dict[str, Any]], env: dict[str, str] | None = None):
    """Run tests/support/client_driver.py in the clients' venv; returns (results, blocked_hosts)."""
    full_env = dict(os.environ)
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        full_env.pop(var, None)
    full_env.update(env or {})
    proc = subprocess.run(
        [str(python), str(DRIVER)],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=full_env,
        timeout=240,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["results"], out["blocked"]


def strip_volatile(body: Any) -> Any:
    """Drop per-request fields (ids, timings) so two answers can be compared exactly."""
    if isinstance(body, dict):
        return {
            k: strip_volatile(v)
            for k, v in body.items()
            if k not in ("inference_id", "detection_id", "time", "image_path", "prediction_type")
        }
    if isinstance(body, list):
        return [strip_volatile(v) for v in body]
    return body
