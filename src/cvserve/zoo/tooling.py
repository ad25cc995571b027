"""Converter environments: isolated venvs, built once, that run the conversion scripts.

TensorFlow and torch never enter the server's own environment. Each converter kind gets a
venv under `<root>/<kind>-<hash of its requirements>/`, built in a temporary folder and
renamed into place when pip succeeds (so a half-built venv is never used), guarded by a
file lock so two pulls don't build the same one at once. Scripts in
`cvserve/zoo/scripts/` run in them as subprocesses.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cvserve.zoo.errors import ZooError

SCRIPTS = Path(__file__).parent / "scripts"
INSTALL_TIMEOUT_S = 3600
CONVERT_TIMEOUT_S = 3600


@dataclass(frozen=True)
class ToolEnv:
    kind: str
    requirements: tuple[str, ...]


# Pinned to the versions these conversions were checked with.
# "+cpu" makes pip take only a CPU build of torch (a CUDA one is gigabytes of libraries
# the export never uses); tf2onnx's numpy-1 idioms are patched at run time by the script.
TF = ToolEnv("tf", ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0"))
TORCH = ToolEnv("torch", ("torch==2.13.0+cpu", "onnx==1.23.2"))


def _env() -> dict[str, str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.update(
        PYTHONNOUSERSITE="1",  # only the venv's packages
        CUDA_VISIBLE_DEVICES="",  # converters run on the CPU whatever the machine has
        TF_CPP_MIN_LOG_LEVEL="2",
        TF_ENABLE_ONEDNN_OPTS="0",  # bit-stable constant folding
    )
    env.pop("PYTHONPATH", None)
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Tooling:
    def __init__(self, root: Path, pip_args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.pip_args = pip_args  # e.g. ("--extra-index-url", URL) where a mirror is needed

    def folder(self, env: ToolEnv) -> Path:
        key = "\n".join((sys.version.split()[0], *env.requirements, *self.pip_args))
        return self.root / f"{env.kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def python(self, env: ToolEnv, report: Callable[[str], None] | None = None) -> Path:
        """The venv's interpreter, building the venv first if this is its first use."""
        folder = self.folder(env)
        py = folder / "bin" / "python"
        if py.exists():
            return py
        with _locked(self.root / f".{env.kind}.lock"):
            if py.exists():
                return py
            if report:
                report(f"building the {env.kind} converter environment (once)")
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{env.kind}-", dir=self.root))
            try:
                self._build(tmp, env)
                # Console scripts in bin/ keep the temporary path in their shebangs; only
                # `bin/python` (and `python -m ...`) is ever used, which survives the rename.
                tmp.rename(folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return py

    def _build(self, folder: Path, env: ToolEnv) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "venv", str(folder)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise ZooError(f"cannot create the {env.kind} venv:\n{_tail(proc.stderr)}")
        cmd = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        cmd += [*self.pip_args, *env.requirements]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=_env(), timeout=INSTALL_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as e:
            raise ZooError(f"installing {' '.join(env.requirements)} timed out") from e
        if proc.returncode != 0:
            raise ZooError(
                f"cannot install {' '.join(env.requirements)} into the {env.kind} converter "
                f"venv:\n{_tail(proc.stderr or proc.stdout)}"
            )

    def run(
        self,
        env: ToolEnv,
        script: str,
        args: list[str],
        report: Callable[[str], None] | None = None,
        cwd: Path | None = None,
    ) -> str:
        """Run `scripts/<script>` with the venv's python; its stdout, or ZooError with stderr."""
        py = self.python(env, report)
        try:
            proc = subprocess.run(
                [str(py), str(SCRIPTS / script), *args],
                capture_output=True,
                text=True,
                env=_env(),
                cwd=cwd,
                timeout=CONVERT_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as e:
            raise ZooError(f"{script} timed out after {CONVERT_TIMEOUT_S} s") from e
        if proc.returncode != 0:
            raise ZooError(f"{script} failed:\n{_tail(proc.stderr or proc.stdout)}")
        return proc.stdout
