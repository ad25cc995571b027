"""The SDK stands alone: importing and using `cvserve.Client` (requests to a real server,
typed results, drawing, saving) changes no process-wide state. Pillow's bomb guard, BLAS
thread limits and the environment stay as they were, and neither ONNX Runtime nor the
server's runtime module is loaded. Runs in a fresh interpreter; the server runs here."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from tests.support.live_server import LiveServer
from tests.support.synthetic_store import build_store, sample_image

SDK_SESSION = r"""
import json, os, sys
# The SDK's third-party dependencies first (OpenCV brings its own OpenBLAS): the baseline
# is what they do on import; what follows is cvserve's own doing.
import cv2, httpx, numpy as np, simplejpeg
from PIL import Image

def blas_limits():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return sorted((i["internal_api"], i["filepath"], i["num_threads"]) for i in threadpool_info())

guard, limits, env = Image.MAX_IMAGE_PIXELS, blas_limits(), dict(os.environ)

import cvserve
import cvserve.client
from cvserve.results import Detections

url, photo, out = sys.argv[1:4]
with cvserve.Client(url, timeout=30) as client:
    det = client.model("det/1").predict(photo, confidence=40)
    seg = client.model("seg/1").predict(open(photo, "rb").read(), mask_format="rle")
typed = det.prediction()
assert isinstance(typed.result, Detections) and len(typed.result) == 2, typed
masks = seg.prediction().result.masks
assert masks is not None and masks[0].mask.any()
det.save(os.path.join(out, "det.jpg"))
seg.save(os.path.join(out, "seg.png"))
# a JSON body decoded on its own, drawn over an array
offline = cvserve.client.PredictionResult(det.json(), image=np.zeros((640, 640, 3), np.uint8))
offline.save(os.path.join(out, "offline.png"))

print(json.dumps({
    "guard": [guard, Image.MAX_IMAGE_PIXELS],
    "limits_same": limits == blas_limits(),
    "env_same": env == dict(os.environ),
    "loaded": sorted(
        m for m in ("onnxruntime", "cvserve.models.runtime", "fastapi") if m in sys.modules
    ),
}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    d = tmp_path_factory.mktemp("sdk")
    build_store(d / "store", d / "work")
    cv2.imwrite(str(d / "photo.png"), sample_image()[:, :, ::-1])
    with LiveServer(d / "store") as srv:
        yield srv, d


def test_sdk_changes_no_process_wide_state(server: tuple[LiveServer, Path]) -> None:
    srv, d = server
    out = d / "out"
    out.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", SDK_SESSION, srv.url, str(d / "photo.png"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    before, after = report["guard"]
    assert before == after and after is not None, "Pillow's bomb guard was changed"
    assert report["limits_same"], "BLAS thread limits were changed"
    assert report["env_same"], "the environment was changed"
    assert report["loaded"] == [], f"the SDK loaded server modules: {report['loaded']}"
    for name in ("det.jpg", "seg.png", "offline.png"):
        drawn = cv2.imread(str(out / name))
        assert drawn is not None and drawn.shape == (640, 640, 3) and drawn.any()
