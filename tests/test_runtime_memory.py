"""Memory (issue 13, point 1): single-threaded lanes share one session, small models keep
their arena memory, and a store loads a composite's parts once (its own loaded ones)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cvserve.models import registry
from cvserve.models.base import InferParams, Model, ModelInfo, Task
from cvserve.models.composite import load_sibling
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions, SessionPool
from cvserve.models.store import ModelStore
from cvserve.results import Prediction
from tests.support.synthetic import constant_model


def test_single_threaded_lanes_share_one_session(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "m.onnx", [np.full((1, 4), 7, np.float32)])
    pool = SessionPool(path, RuntimeOptions(lanes=2, threads_per_lane=1, wide_threads=2))
    assert len(pool._sessions) == 1 and pool._wide is not None
    x = np.zeros((1, 3, 640, 640), np.float32)
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: pool.run({"images": x})[0], range(16)))
    assert all(np.array_equal(o, np.full((1, 4), 7, np.float32)) for o in outs)
    assert pool.lean is False  # a few MB of activations: kept between runs
    # Multi-threaded lanes keep a session each.
    two = SessionPool(path, RuntimeOptions(lanes=2, threads_per_lane=2))
    assert len(two._sessions) == 2


class _Part(Model):
    def __init__(self, model_id: str) -> None:
        self.info = ModelInfo(model_id, Task.CLASSIFICATION, [], None, "t-part")

    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        raise NotImplementedError


class _Whole(_Part):
    def __init__(self, model_id: str, part: Model) -> None:
        super().__init__(model_id)
        self.part = part


def test_store_loads_a_composites_parts_once(tmp_path: Path) -> None:
    loads: list[str] = []

    @registry.family("t-part")
    def _load_part(mid: str, manifest: Manifest, folder: Path, options: RuntimeOptions) -> Model:
        loads.append(mid)
        return _Part(mid)

    @registry.family("t-whole", parts=True)
    def _load_whole(
        mid: str,
        manifest: Manifest,
        folder: Path,
        options: RuntimeOptions,
        parts: registry.PartResolver | None,
    ) -> Model:
        return _Whole(mid, load_sibling(folder.parent.parent, "p/1", options, parts))

    for mid, family in (("p/1", "t-part"), ("w/1", "t-whole")):
        (tmp_path / mid).mkdir(parents=True)
        Manifest(task=Task.CLASSIFICATION, family=family, weights="").write(tmp_path / mid)
    store = ModelStore(tmp_path)
    whole = store.get("w/1")
    assert isinstance(whole, _Whole)
    assert whole.part is store.get("p/1")  # the store's own, loaded by the composite's load
    assert loads == ["p/1"]
    assert set(store.stats) == {"p/1", "w/1"}
    # Outside a store (an import's check), a part is loaded on its own.
    assert load_sibling(tmp_path, "p/1", RuntimeOptions(), None) is not whole.part
    assert loads == ["p/1", "p/1"]


def test_huge_page_reexec_only_when_serve_is_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process callers (CliRunner, an embedding app) must never be exec'd away."""
    from cvserve.models import memory

    execs: list[list[str]] = []
    monkeypatch.setattr(memory.os, "execve", lambda exe, argv, env: execs.append(argv))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("CVSERVE_HUGE_PAGES", raising=False)
    monkeypatch.setattr(memory.sys, "orig_argv", ["python", "-m", "pytest", "tests"])
    memory.exec_with_huge_pages()
    assert execs == []
    for argv in (
        ["python", "-m", "cvserve.cli", "serve", "--port", "1"],
        ["python", "/venv/bin/cvserve", "serve"],
    ):
        monkeypatch.setattr(memory.sys, "orig_argv", argv)
        assert memory._serve_is_the_program(), argv
    monkeypatch.setattr(memory.sys, "orig_argv", ["python", "/venv/bin/cvserve", "predict", "x"])
    assert not memory._serve_is_the_program()
