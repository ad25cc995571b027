"""Cold start (issue 13, point 5): each load through the store is recorded in the model's
folder (`.load.json`: seconds, resident growth, runtimes, when), `cvserve models list` shows
it as "last load", a store the server cannot write to never fails the load, and a removed or
replaced model never keeps the old model's record."""

from __future__ import annotations

import errno
import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cvserve.cli import app
from cvserve.models.base import InferParams
from cvserve.models.importers import import_model
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import LOAD_RECORD, LoadRecord, ModelStore
from tests.support.hostile_support import CLS_ID, DET_ID, SIDE, add_classifier, add_detector

BIG_ID = "big/1"


def _add_big_classifier(root: Path) -> None:
    """A 1000-class linear classifier on the 64x64 input: 49 MB of weights, so its load grows
    the process measurably."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    add_classifier(root, BIG_ID)
    folder = root / BIG_ID
    weights = np.random.default_rng(0).standard_normal((3 * SIDE * SIDE, 1000), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["images"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "big",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 1000])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    manifest = json.loads((folder / "cvserve.json").read_text())
    manifest["class_names"] = [f"c{i}" for i in range(1000)]
    (folder / "cvserve.json").write_text(json.dumps(manifest))


def _store(root: Path, **options: object) -> ModelStore:
    return ModelStore(root, RuntimeOptions(lanes=1, threads_per_lane=1, **options))  # type: ignore[arg-type]


def test_a_real_load_writes_its_record(tmp_path: Path) -> None:
    root = tmp_path / "models"
    add_detector(root)
    _add_big_classifier(root)
    store = _store(root)
    assert store.last_load(DET_ID) is None and not (root / DET_ID / LOAD_RECORD).exists()
    began = datetime.now(timezone.utc)
    for mid in (DET_ID, BIG_ID):
        store.get(mid)
        data = json.loads((root / mid / LOAD_RECORD).read_text())
        stats = store.stats[mid]
        assert data["seconds"] == round(stats.seconds, 4) and 0 < stats.seconds < 60
        assert data["resident_bytes"] == stats.resident_bytes >= 0
        assert data["runtimes"] == ["onnxruntime f32"]
        at = datetime.fromisoformat(data["loaded_at"].replace("Z", "+00:00"))
        assert began - timedelta(seconds=2) <= at <= datetime.now(timezone.utc)
        record = store.last_load(mid)
        assert record is not None and record.resident_bytes == stats.resident_bytes
    # 48 MB of weights: the growth shows them (ONNX Runtime holds them once at least).
    assert store.stats[BIG_ID].resident_bytes > 40e6
    # No temp file is left beside it, and another process's store reads the same record.
    assert sorted(p.name for p in (root / DET_ID).iterdir() if p.name.startswith(".")) == [
        LOAD_RECORD
    ]
    assert ModelStore(root).last_load(BIG_ID) == store.last_load(BIG_ID)
    # A second load (after an unload: the budget's eviction) replaces the record.
    first = store.last_load(DET_ID)
    store.unload(DET_ID)
    store.get(DET_ID)
    assert store.stats[DET_ID].loads == 2
    second = store.last_load(DET_ID)
    assert second is not None and first is not None
    assert second.seconds == round(store.stats[DET_ID].seconds, 4)


def test_the_record_names_an_opt_in_runtime(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    root = tmp_path / "models"
    add_detector(root)
    store = _store(root, runtime="openvino", precision="bf16")
    store.get(DET_ID)
    record = store.last_load(DET_ID)
    assert record is not None and record.runtimes == ("openvino bf16",)
    assert record.describe().endswith(", openvino bf16")


def test_models_list_shows_the_last_load(tmp_path: Path) -> None:
    root = tmp_path / "models"
    add_detector(root)
    add_classifier(root)
    _store(root).get(DET_ID)
    record = ModelStore(root).last_load(DET_ID)
    assert record is not None
    shown = record.describe()
    assert shown.startswith(f"{record.seconds:.2f} s, +") and shown.endswith(
        f" MB ({record.loaded_at[:10]})"
    )
    result = CliRunner().invoke(app, ["models", "list", "--models-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert "last load" in result.output
    lines = result.output.splitlines()
    (det,) = [ln for ln in lines if DET_ID in ln]
    (cls,) = [ln for ln in lines if CLS_ID in ln]
    assert shown in det  # on one line, never wrapped
    assert cls.rstrip().rstrip("│|").rstrip().endswith("-")  # never loaded


def test_describe_formats() -> None:
    rec = LoadRecord(3.3061, 209_400_000, ("onnxruntime f32",), "2026-12-02T14:40:00Z")
    assert rec.describe() == "3.31 s, +209 MB (2026-12-02)"
    sam = LoadRecord(1.0, 0, ("openvino bf16", "openvino f32"), "2026-12-02T14:40:00Z")
    assert sam.describe() == "1.00 s, +0 MB (2026-12-02), openvino bf16 / openvino f32"
    assert LoadRecord.from_dict(rec.as_dict()) == LoadRecord(
        3.3061, 209_400_000, ("onnxruntime f32",), "2026-12-02T14:40:00Z"
    )
    assert LoadRecord.from_dict({"seconds": "x"}) is None
    assert LoadRecord.from_dict([1, 2]) is None


def test_an_unwritable_store_never_fails_the_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    add_detector(root)
    add_classifier(root)
    # 1. The record's name is taken by a folder: os.replace fails (as root too).
    (root / DET_ID / LOAD_RECORD).mkdir()
    store = _store(root)
    caplog.set_level("DEBUG", logger="cvserve.models")
    model = store.get(DET_ID)
    assert len(model.predict(np.zeros((64, 64, 3), np.uint8), InferParams()).result) == 2
    assert store.last_load(DET_ID) is None and DET_ID in store.loaded_ids()
    assert any("cannot record the load of det/1" in r.getMessage() for r in caplog.records)
    assert [p.name for p in (root / DET_ID).iterdir() if p.name.endswith(".tmp")] == []

    # 2. A read-only file system (EROFS from the write), as a read-only mount answers.
    def refuse(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", refuse)
        store.get(CLS_ID)
    assert CLS_ID in store.loaded_ids() and store.last_load(CLS_ID) is None
    # 3. A folder without write permission (meaningful for a user other than root).
    if os.geteuid() != 0:
        other = tmp_path / "ro"
        add_detector(other)
        (other / DET_ID).chmod(0o555)
        try:
            _store(other).get(DET_ID)
            assert ModelStore(other).last_load(DET_ID) is None
        finally:
            (other / DET_ID).chmod(0o755)


def test_remove_and_replace_drop_the_old_record(tmp_path: Path) -> None:
    root = tmp_path / "models"
    add_detector(root)
    store = _store(root)
    store.get(DET_ID)
    assert store.last_load(DET_ID) is not None
    # A copy of the loaded folder imported over it (import --replace): no record of its own.
    copy = tmp_path / "copy"
    shutil.copytree(root / DET_ID, copy)
    assert (copy / LOAD_RECORD).is_file()
    import_model(copy, DET_ID, store, replace=True)
    assert store.last_load(DET_ID) is None and DET_ID not in store.loaded_ids()
    # The same copy as a new id (an int8 variant is made the same way): none either.
    import_model(copy, "det/2", store)
    assert store.last_load("det/2") is None
    # Removed, then a new model under the same id: never the removed one's record.
    store.get(DET_ID)
    assert store.last_load(DET_ID) is not None
    store.remove(DET_ID)
    add_detector(root)
    assert store.last_load(DET_ID) is None
    result = CliRunner().invoke(app, ["models", "list", "--models-dir", str(root)])
    (det,) = [ln for ln in result.output.splitlines() if f"{DET_ID} " in ln]
    assert " s, +" not in det
