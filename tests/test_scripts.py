"""scripts/serve, scripts/cvserve and scripts/test share one .venv and reinstall only when
pyproject.toml changed (issue 21, point 1). Run against a copy of the scripts whose .venv
holds a recording python and cvserve, so nothing is installed for real."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    for name in ("python", "cvserve"):  # record each call's arguments, do nothing else
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        exe.chmod(0o755)
    return tmp_path


def _run(clone: Path, *args: str) -> list[str]:
    log = clone / "calls.log"
    log.unlink(missing_ok=True)
    subprocess.run(args, cwd="/", check=True, timeout=60, env={**os.environ, "PATH": os.defpath})
    return log.read_text().splitlines() if log.exists() else []


def _ensure(clone: Path, extra: str = "") -> list[str]:
    script = f"cd {clone} && . scripts/_venv.sh && ensure_venv {extra}"
    return _run(clone, "bash", "-c", script)


def _installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("python -m pip install -q -e")]


def test_cvserve_wrapper_installs_once_then_runs_the_cli(clone: Path) -> None:
    calls = _run(clone, str(clone / "scripts" / "cvserve"), "models", "list")
    assert _installs(calls) == ["python -m pip install -q -e ."]
    assert calls[-1] == "cvserve models list"
    # Unchanged pyproject.toml: no pip at all, straight to the CLI.
    assert _run(clone, str(clone / "scripts" / "cvserve"), "models", "list") == [
        "cvserve models list"
    ]
    assert _run(clone, str(clone / "scripts" / "serve"), "--port", "9002") == [
        "cvserve serve --port 9002"
    ]


def test_a_changed_pyproject_or_a_new_extra_reinstalls(clone: Path) -> None:
    assert _installs(_ensure(clone)) == ["python -m pip install -q -e ."]
    assert _ensure(clone) == []
    # The test extra is a superset: installed once, then it covers the plain install too.
    assert _installs(_ensure(clone, "test")) == ["python -m pip install -q -e .[test]"]
    assert _ensure(clone, "test") == [] and _ensure(clone) == []
    with (clone / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency\n")
    assert _installs(_ensure(clone)) == ["python -m pip install -q -e ."]
    assert _installs(_ensure(clone, "test")) == ["python -m pip install -q -e .[test]"]
