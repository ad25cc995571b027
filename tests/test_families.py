"""One record per model family: its loader, typed post-processing options, a keypoint layout
its graph fixes and how it is quantized, all in the registry; a family is one module (or, here,
one decorated loader) away."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvserve.errors import ModelLoadError
from cvserve.keypoint_sets import COCO_LAYOUT, FACE_LAYOUT
from cvserve.models import registry
from cvserve.models.base import Model, Task
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.yolo import YoloOptions
from tests.conftest import add_model, make_store
from tests.support.synthetic import rect_finder_model, ultralytics_meta

QUANTIZE = {
    "yolo": "tensor",
    "classifier": "tensor",
    "semantic": "tensor",
    "ssd": "tensor",
    "retinaface": "tensor",
    "movenet": "tensor",
    "sam": "encoder",
    "composite": "composite",
}


def test_every_family_has_one_record() -> None:
    assert set(QUANTIZE) <= set(registry.known_families())
    for name, kind in QUANTIZE.items():
        record = registry.family_of(name)
        assert record is not None and record.name == name and record.quantize == kind
        assert issubclass(record.options, registry.FamilyOptions)
    assert registry.family_of("movenet").keypoints == COCO_LAYOUT  # type: ignore[union-attr]
    assert registry.family_of("retinaface").keypoints == FACE_LAYOUT  # type: ignore[union-attr]
    assert registry.family_of("nope") is None


def test_options_are_typed_with_defaults_and_keep_unknown_keys() -> None:
    opts = YoloOptions.read("m/1", {"num_masks": "16", "task": "segment"})
    assert (opts.format, opts.num_masks, opts.kpt_shape) == ("v8", 16, None)
    with pytest.raises(ModelLoadError, match="m/1: invalid postprocess options"):
        YoloOptions.read("m/1", {"num_masks": "many"})


def test_a_malformed_option_fails_the_load_naming_the_model(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    meta = ultralytics_meta("detect", ["a"])
    add_model(store, "det/1", rect_finder_model(tmp_path / "d.onnx", metadata=meta))
    folder = store.folder("det/1")
    manifest = Manifest.read(folder)
    bad = manifest.model_copy(update={"postprocess": {**manifest.postprocess, "format": 3}})
    with pytest.raises(ModelLoadError, match="det/1"):
        registry.load("det/1", bad, folder, RuntimeOptions())


def test_a_new_family_is_one_decorated_loader(tmp_path: Path) -> None:
    layout = (["a", "b"], [(0, 1)])

    @registry.family("t-dots", keypoints=layout)
    def _load(mid: str, manifest: Manifest, folder: Path, options: RuntimeOptions) -> Model:
        raise NotImplementedError  # never loaded: its record is what is under test

    manifest = Manifest(task=Task.KEYPOINT_DETECTION, family="t-dots", weights="")
    info = registry.info_from_manifest("dots/1", manifest)
    assert (info.keypoint_names, info.skeleton) == (["a", "b"], [(0, 1)])
    assert registry.family_of("t-dots").quantize is None  # type: ignore[union-attr]
