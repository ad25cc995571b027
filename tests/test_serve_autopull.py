"""`cvserve serve` on an empty store: ONNX-native defaults before serving, converted ones
in the background while it serves."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvserve import zoo
from cvserve.cli import app


def test_serve_pulls_native_models_first_and_converts_the_rest_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []  # (name, thread name)
    background_done = threading.Event()
    serving = threading.Event()
    served_after: list[list[str]] = []

    def fake_pull(name: str, store: object, **kwargs: object) -> str:
        if threading.current_thread().name != "MainThread":
            serving.wait(10)  # background pulls run while the server serves
        calls.append((name, threading.current_thread().name))
        if name == zoo.DEFAULT_SET[-1]:
            background_done.set()
        return f"{name}/1"

    def fake_run(app_: object, **kwargs: object) -> None:
        served_after.append([n for n, _ in calls])  # what had landed when serving began
        serving.set()

    monkeypatch.setattr(zoo, "pull", fake_pull)
    monkeypatch.setattr("uvicorn.run", fake_run)
    result = CliRunner().invoke(
        app, ["serve", "--models-dir", str(tmp_path / "models"), "--port", "9999"]
    )
    assert result.exit_code == 0, result.output
    assert background_done.wait(10)
    native = [n for n in zoo.DEFAULT_SET if n in ("faces", "salient")]
    assert served_after == [native]  # only the ONNX-native ones block start-up
    by_thread = dict(calls)
    assert all(by_thread[n] == "MainThread" for n in native)
    converted = [n for n in zoo.DEFAULT_SET if n not in native]
    assert converted and all(by_thread[n] == "cvserve-pull" for n in converted)
    assert [n for n, _ in calls] == list(zoo.DEFAULT_SET)


def test_serve_no_pull_pulls_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo, "pull", lambda *a, **k: pytest.fail("pulled with --no-pull"))
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: None)
    result = CliRunner().invoke(app, ["serve", "--models-dir", str(tmp_path), "--no-pull"])
    assert result.exit_code == 0, result.output
