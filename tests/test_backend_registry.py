"""One registry of runtime backends: each is a record (how it opens a session, its version,
whether it is installed), and the runtime a model file runs on is looked up there."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvserve.errors import ModelLoadError
from cvserve.models.backends import registry, session_maker
from tests.support.synthetic import rect_finder_model, ultralytics_meta


def test_every_backend_has_a_record_the_reference_first() -> None:
    names = [b.name for b in registry.backends()]
    assert names[0] == registry.REFERENCE == "onnxruntime" and "openvino" in names
    for record in registry.backends():
        assert record.available() in (True, False)
        if record.available():
            assert record.version()
    assert registry.backend("nope") is None and not registry.available("nope")


def test_a_runtime_is_opened_through_its_record(tmp_path: Path) -> None:
    path = rect_finder_model(tmp_path / "m.onnx", metadata=ultralytics_meta("detect", ["a"]))
    choice = session_maker(path, "onnxruntime", "f32", 1)
    assert (choice.runtime, choice.precision, choice.reason) == (
        "onnxruntime", "f32", "runtime onnxruntime",
    )  # fmt: skip
    session = choice.make(1, False, 1)
    assert [i.name for i in session.get_inputs()]
    with pytest.raises(ModelLoadError, match="unknown runtime 'tpu'"):
        session_maker(path, "tpu", "f32", 1)
