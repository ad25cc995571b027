"""Importers: Ultralytics ONNX metadata, the peer's folder layout, cvserve.json configs, and
the `cvserve models import | list | remove` commands; a failed import leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cvserve.cli import app as cli_app
from cvserve.errors import BadRequest
from cvserve.models.base import InferParams, Task
from cvserve.models.store import ModelStore
from tests.conftest import add_model
from tests.support.synthetic import (
    constant_model,
    letterbox_reference,
    peer_layout,
    seg_protos,
    ultralytics_meta,
    yolo_head,
)


def _leftovers(store: ModelStore) -> list[str]:
    if not store.root.exists():
        return []
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*"))


def _detect(tmp_path: Path, names, *, name="det.onnx", **meta) -> Path:
    head = yolo_head([(320, 320, 64, 64)], [[0.9] + [0.0] * (len(names) - 1)], candidates=8)
    return constant_model(
        tmp_path / name, [head], metadata=ultralytics_meta("detect", names, **meta)
    )


# -- Ultralytics metadata -------------------------------------------------------------------------


def test_ultralytics_detect(tmp_path, store):
    info = add_model(store, "det/1", _detect(tmp_path, ["person", "bicycle", "car"]))
    assert info.task is Task.OBJECT_DETECTION
    assert info.class_names == ["person", "bicycle", "car"]
    assert info.input_size == (640, 640)
    m = store.manifest("det/1")
    assert m.family == "yolo" and m.postprocess["format"] == "v8"
    assert m.preprocess.resize == "letterbox" and m.preprocess.pad_value == 114
    assert (store.folder("det/1") / m.weights).is_file()
    assert store.ids() == ["det/1"]


def test_names_dict_literal_is_ordered_by_key(tmp_path, store):
    meta = ultralytics_meta("detect", ["x"])
    meta["names"] = "{1: 'b, with comma', 0: \"it's a\", 2: 'c: colon'}"
    head = yolo_head([(320, 320, 64, 64)], [[0.9, 0, 0]], candidates=4)
    path = constant_model(tmp_path / "n.onnx", [head], metadata=meta)
    info = add_model(store, "names/1", path)
    assert info.class_names == ["it's a", "b, with comma", "c: colon"]


def test_rectangular_imgsz(tmp_path, store):
    """imgsz is (h, w): [384, 640] means a 640-wide, 384-high input."""
    width, height = 1280, 720
    r, left, top = letterbox_reference(width, height, 640, 384)
    target = (300.0, 200.0, 900.0, 600.0)
    x1, y1, x2, y2 = (
        target[0] * r + left,
        target[1] * r + top,
        target[2] * r + left,
        target[3] * r + top,
    )
    head = yolo_head([((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)], [[0.9]], candidates=4)
    meta = ultralytics_meta("detect", ["thing"])
    meta["imgsz"] = "[384, 640]"
    path = constant_model(
        tmp_path / "rect.onnx", [head], input_shape=(1, 3, 384, 640), metadata=meta
    )
    info = add_model(store, "rect/1", path)
    assert info.input_size == (640, 384)
    pred = store.get("rect/1").predict(np.zeros((height, width, 3), np.uint8), InferParams())
    np.testing.assert_allclose(pred.result.xyxy[0], target, atol=1e-3)


def test_ultralytics_segment(tmp_path, store):
    names = ["a", "b"]
    # One instance whose mask fills its box (an empty mask drops it, as Ultralytics does).
    head = yolo_head([(320, 320, 64, 64)], [[0.9, 0.0]], [[1.0] + [0.0] * 31], candidates=8)
    path = constant_model(
        tmp_path / "seg.onnx",
        [head, seg_protos([np.ones((160, 160), np.float32)])],
        metadata=ultralytics_meta("segment", names),
    )
    info = add_model(store, "seg/1", path)
    assert info.task is Task.INSTANCE_SEGMENTATION
    assert store.get("seg/1").predict(np.zeros((64, 64, 3), np.uint8), InferParams()).result.masks


@pytest.mark.parametrize("kpt_shape", ["[17, 3]", "[5, 2]"])
def test_ultralytics_pose(tmp_path, store, kpt_shape):
    k, d = json.loads(kpt_shape)
    head = yolo_head([(320, 320, 64, 64)], [[0.9]], [[300.0] * (k * d)], candidates=8)
    meta = ultralytics_meta("pose", ["person"], kpt_shape=kpt_shape)
    info = add_model(store, "pose/1", constant_model(tmp_path / "p.onnx", [head], metadata=meta))
    assert info.task is Task.KEYPOINT_DETECTION
    assert store.manifest("pose/1").postprocess["kpt_shape"] == [k, d]
    det = store.get("pose/1").predict(np.zeros((640, 640, 3), np.uint8), InferParams()).result
    assert det.keypoints.shape == (1, k, 3)
    if k == 17:
        assert det.keypoint_names[0] == "nose" and len(det.skeleton) == 19
    else:
        assert np.all(det.keypoints[..., 2] == 1.0)  # no visibility column: fully confident


def test_ultralytics_classify(tmp_path, store):
    meta = ultralytics_meta("classify", ["cat", "dog"], imgsz=224)
    path = constant_model(
        tmp_path / "c.onnx",
        [np.array([[0.1, 0.9]], np.float32)],
        input_shape=(1, 3, 224, 224),
        metadata=meta,
    )
    info = add_model(store, "cls/1", path)
    assert info.task is Task.CLASSIFICATION and info.input_size == (224, 224)
    assert store.manifest("cls/1").family == "classifier"


@pytest.mark.parametrize("meta", [{"end2end": "True"}, {"args": "{'nms': True, 'batch': 1}"}])
def test_ultralytics_end2end_flags(tmp_path, store, meta):
    rows = np.zeros((1, 300, 6), np.float32)
    path = constant_model(
        tmp_path / "e.onnx", [rows], metadata=ultralytics_meta("detect", ["a", "b"], **meta)
    )
    add_model(store, "e2e/1", path)
    assert store.manifest("e2e/1").postprocess["format"] == "end2end"


def test_single_onnx_in_a_folder(tmp_path, store):
    folder = tmp_path / "export"
    folder.mkdir()
    _detect(folder, ["a"], name="best.onnx")
    assert add_model(store, "fold/1", folder).class_names == ["a"]


# -- the peer's layout -------------------------------------------------------------------------------


def test_peer_layout_detection(tmp_path, store):
    weights = _detect(tmp_path, ["cat", "dog"])
    folder = peer_layout(
        tmp_path / "peer",
        weights,
        task="object-detection",
        class_names=["cat", "dog"],
        resize="Fit (black edges) in",
        size=(640, 640),
    )
    info = add_model(store, "peer/4", folder)
    assert info.task is Task.OBJECT_DETECTION and info.class_names == ["cat", "dog"]
    m = store.manifest("peer/4")
    assert m.preprocess.resize == "letterbox" and m.preprocess.pad_value == 0
    for name in ("weights.onnx", "environment.json", "model_type.json", "class_names.txt"):
        assert (store.folder("peer/4") / name).is_file()


def test_peer_class_names_from_txt_when_no_class_map(tmp_path, store):
    weights = _detect(tmp_path, ["x", "y"])
    folder = peer_layout(
        tmp_path / "peer", weights, task="object-detection", class_names=["x", "y"], class_map=False
    )
    assert add_model(store, "peer/5", folder).class_names == ["x", "y"]


def test_peer_preprocessing_as_object_and_many_classes(tmp_path, store):
    """PREPROCESSING may also be a JSON object; CLASS_MAP keys sort numerically."""
    names = [f"c{i}" for i in range(12)]
    weights = _detect(tmp_path, names)
    folder = peer_layout(tmp_path / "peer", weights, task="object-detection", class_names=names)
    env = json.loads((folder / "environment.json").read_text())
    env["PREPROCESSING"] = json.loads(env["PREPROCESSING"])
    (folder / "environment.json").write_text(json.dumps(env))
    info = add_model(store, "peer/6", folder)
    assert info.class_names == names  # "10" after "9", not after "1"
    assert store.manifest("peer/6").preprocess.resize == "stretch"


def test_peer_keypoints_metadata(tmp_path, store):
    head = yolo_head([(320, 320, 64, 64)], [[0.9]], [[1.0] * 9], candidates=4)
    weights = constant_model(tmp_path / "k.onnx", [head])
    folder = peer_layout(
        tmp_path / "peer",
        weights,
        task="keypoint-detection",
        class_names=["helmet"],
        keypoints=["top", "left", "right"],
        edges=[(0, 1), (0, 2)],
    )
    add_model(store, "peer/7", folder)
    m = store.manifest("peer/7")
    assert m.keypoint_names == ["top", "left", "right"]
    assert [tuple(e) for e in m.skeleton] == [(0, 1), (0, 2)]
    assert m.postprocess["kpt_shape"] == [3, 3]
    assert (store.folder("peer/7") / "keypoints_metadata.json").is_file()


# -- cvserve.json ----------------------------------------------------------------------------------


def test_folder_with_cvserve_json(tmp_path, store):
    folder = tmp_path / "custom"
    folder.mkdir()
    constant_model(
        folder / "net.onnx", [np.array([[1.0, 2.0]], np.float32)], input_shape=(1, 3, 32, 32)
    )
    (folder / "cvserve.json").write_text(
        json.dumps(
            {
                "task": "classification",
                "family": "classifier",
                "weights": "net.onnx",
                "class_names": ["no", "yes"],
                "preprocess": {"resize": "stretch"},
            }
        )
    )
    info = add_model(store, "custom/1", folder)
    assert info.task is Task.CLASSIFICATION and info.input_size is None  # from the ONNX shape
    model = store.get("custom/1")
    assert model.input_size == (32, 32)


# -- failures leave nothing ------------------------------------------------------------------------


def _assert_refused(store, model_id, path, config=None, match=None):
    with pytest.raises(BadRequest, match=match):
        add_model(store, model_id, path, config=config)
    assert not store.exists(model_id)
    assert _leftovers(store) == []


def test_failed_imports_leave_nothing(tmp_path, store):
    # not an ONNX file at all
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not a protobuf")
    _assert_refused(store, "bad/1", junk)
    # an ONNX file without Ultralytics metadata and no config
    plain = constant_model(tmp_path / "plain.onnx", [np.zeros((1, 5, 8), np.float32)])
    _assert_refused(store, "bad/2", plain, match="metadata")
    # an unsupported Ultralytics task
    obb = constant_model(
        tmp_path / "obb.onnx",
        [np.zeros((1, 6, 8), np.float32)],
        metadata=ultralytics_meta("obb", ["a"]),
    )
    _assert_refused(store, "bad/3", obb, match="obb")
    # a path that does not exist, a bad model id
    _assert_refused(store, "bad/4", tmp_path / "nope.onnx")
    _assert_refused(store, "not a valid id", _detect(tmp_path, ["a"]))
    # a config naming an unknown family
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"task": "object-detection", "family": "nope", "class_names": ["a"]}))
    _assert_refused(store, "bad/5", _detect(tmp_path, ["a"], name="m.onnx"), config=cfg)
    # a folder with two .onnx files and nothing saying which
    two = tmp_path / "two"
    two.mkdir()
    _detect(two, ["a"], name="a.onnx")
    _detect(two, ["a"], name="b.onnx")
    _assert_refused(store, "bad/6", two)


def test_output_that_does_not_match_the_classes_is_refused(tmp_path, store):
    """80 names but a head with room for 3 classes: refuse at import, not at request time."""
    head = yolo_head([(320, 320, 64, 64)], [[0.9, 0, 0]], candidates=8)
    meta = ultralytics_meta("detect", [f"c{i}" for i in range(80)])
    path = constant_model(tmp_path / "mismatch.onnx", [head], metadata=meta)
    _assert_refused(store, "bad/7", path)


def test_segment_without_prototypes_is_refused(tmp_path, store):
    head = yolo_head([(320, 320, 64, 64)], [[0.9]], [[0.0] * 32], candidates=8)
    path = constant_model(
        tmp_path / "noproto.onnx", [head], metadata=ultralytics_meta("segment", ["a"])
    )
    _assert_refused(store, "bad/8", path)


def test_existing_model_needs_replace(tmp_path, store):
    add_model(store, "dup/1", _detect(tmp_path, ["a"]))
    with pytest.raises(BadRequest, match="exists"):
        add_model(store, "dup/1", _detect(tmp_path, ["b"], name="b.onnx"))
    assert store.manifest("dup/1").class_names == ["a"]
    from cvserve.models.importers import import_model

    import_model(_detect(tmp_path, ["b"], name="b.onnx"), "dup/1", store, replace=True)
    assert store.manifest("dup/1").class_names == ["b"]
    assert [p for p in store.root.rglob("*") if ".staging" in p.name or ".old-" in p.name] == []


# -- the CLI -----------------------------------------------------------------------------------------


def test_cli_import_list_remove(tmp_path, monkeypatch):
    for var in ("CVSERVE_MODELS_DIR", "CVSERVE_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    models_dir = tmp_path / "store"
    onnx_path = _detect(tmp_path, ["person", "car"])
    r = runner.invoke(
        cli_app,
        ["models", "import", str(onnx_path), "--id", "cars/3", "--models-dir", str(models_dir)],
    )
    assert r.exit_code == 0, r.output
    assert "cars/3" in r.output and "object-detection" in r.output
    assert (models_dir / "cars" / "3" / "cvserve.json").is_file()

    r = runner.invoke(cli_app, ["models", "list", "--models-dir", str(models_dir)])
    assert r.exit_code == 0, r.output
    assert "cars/3" in r.output and "object-detection" in r.output and "person" in r.output

    # importing over it fails without --replace, and leaves the model as it was
    r = runner.invoke(
        cli_app,
        ["models", "import", str(onnx_path), "--id", "cars/3", "--models-dir", str(models_dir)],
    )
    assert r.exit_code != 0
    assert (models_dir / "cars" / "3" / "cvserve.json").is_file()

    # a failed import: non-zero exit, a message, nothing written
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"nope")
    r = runner.invoke(
        cli_app, ["models", "import", str(junk), "--id", "junk/1", "--models-dir", str(models_dir)]
    )
    assert r.exit_code != 0
    assert not (models_dir / "junk").exists()
    assert sorted(p.name for p in models_dir.iterdir()) == ["cars"]

    r = runner.invoke(cli_app, ["models", "remove", "cars/3", "--models-dir", str(models_dir)])
    assert r.exit_code == 0, r.output
    assert not (models_dir / "cars").exists()
    r = runner.invoke(cli_app, ["models", "remove", "cars/3", "--models-dir", str(models_dir)])
    assert r.exit_code != 0

    r = runner.invoke(cli_app, ["models", "list", "--models-dir", str(models_dir)])
    assert r.exit_code == 0 and "cars/3" not in r.output


def test_cli_import_with_config(tmp_path, monkeypatch):
    monkeypatch.delenv("CVSERVE_MODELS_DIR", raising=False)
    onnx_path = constant_model(
        tmp_path / "seg.onnx", [np.zeros((1, 2, 16, 16), np.float32)], input_shape=(1, 3, 64, 64)
    )
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "task": "semantic-segmentation",
                "family": "semantic",
                "weights": "model.onnx",
                "class_names": ["bg", "fg"],
                "preprocess": {"resize": "stretch"},
            }
        )
    )
    models_dir = tmp_path / "store"
    r = CliRunner().invoke(
        cli_app,
        [
            "models",
            "import",
            str(onnx_path),
            "--id",
            "sem/1",
            "--config",
            str(cfg),
            "--models-dir",
            str(models_dir),
        ],
    )
    assert r.exit_code == 0, r.output
    store = ModelStore(models_dir)
    assert store.manifest("sem/1").task is Task.SEMANTIC_SEGMENTATION
    assert (models_dir / "sem" / "1" / "model.onnx").is_file()
