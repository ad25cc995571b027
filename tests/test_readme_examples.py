"""The README's usage examples, run as they are written (issue 21): every block with a curl
line against a live `cvserve serve`, `cvserve predict`, and every Python snippet in the
environment the README names for it: cvserve's own (`import cvserve`, httpx) or the official
clients' venv (`inference_sdk`, `roboflow`: .cache/clients-venv from
tests/support/clients-requirements.txt, as the README says to build it).

Synthetic models stand in for the zoo's under the README's ids (coco-detect/1, imagenet/1,
mobilesam/1...), in a folder holding the photos the snippets name. Only the base URL is
rewritten, to the test server's port (and the example.com photo URL to a local one)."""

from __future__ import annotations

import ast
import functools
import http.server
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import cv2
import pytest

from cvserve.models.importers import import_model
from cvserve.models.store import ModelStore
from tests.support.live_server import serve_subprocess, stop
from tests.support.official_clients import clients_python
from tests.support.synthetic_sam import write_sam_model
from tests.support.synthetic_store import (
    _cls_model,
    _det_model,
    _pose_model,
    _seg_model,
    _sem_folder,
    sample_image,
)

ROOT = Path(__file__).resolve().parents[1]
README_URL = "http://127.0.0.1:9001"
PHOTO_URL = "https%3A%2F%2Fexample.com%2Fdog.jpg"
PHOTOS = ("dog.jpg", "people.jpg", "street.jpg", "cat.jpg", "coffee.jpg")
CLIENT_IMPORTS = re.compile(r"^\s*(from|import) (inference_sdk|roboflow)\b", re.M)


@dataclass(frozen=True)
class Block:
    heading: str
    lang: str
    code: str
    line: int

    @property
    def id(self) -> str:
        return f"{self.heading} (README.md:{self.line})"


def usage_blocks() -> list[Block]:
    """The fenced blocks from "## Usage" up to "## How it is built", each under its heading."""
    text = (ROOT / "README.md").read_text()
    start, end = text.index("\n## Usage\n"), text.index("\n## How it is built\n")
    blocks, heading = [], ""
    lines = text[:end].splitlines()
    i = text[:start].count("\n") + 1
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        fence = re.match(r"^(\s*)```(\w+)\s*$", line)
        if fence:
            indent, body, first = fence.group(1), [], i + 1
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i][len(indent) :])
                i += 1
            blocks.append(Block(heading, fence.group(2), "\n".join(body) + "\n", first))
        i += 1
    return blocks


BLOCKS = usage_blocks()
CURL = [
    b for b in BLOCKS if b.lang == "bash" and ("curl " in b.code or "cvserve predict" in b.code)
]
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def test_the_readme_examples_are_all_found() -> None:
    """Guards the parser: a renamed heading must not silently drop examples."""
    assert len(CURL) >= 7 and len(PYTHON) >= 7, [b.id for b in BLOCKS]
    headings = {b.heading for b in CURL + PYTHON}
    assert {"Object detection", "Promptable segmentation jobs", "Semantic segmentation"} <= headings
    for block in PYTHON:  # each snippet belongs to exactly one of the two environments
        assert not (CLIENT_IMPORTS.search(block.code) and "import cvserve" in block.code), block.id


def test_readme_counts_coco_detects_classes_as_the_model_does() -> None:
    """The README said 90 COCO classes; the model, /models and the page say 80."""
    from cvserve.zoo.labels import COCO_90

    text = (ROOT / "README.md").read_text()
    claims = [
        line for line in text.splitlines() if "coco-detect" in line and "COCO classes" in line
    ]
    assert len(claims) >= 2, claims
    for line in claims:
        assert f"{len(COCO_90)} COCO classes" in line, line


def _install_closure(dist: str = "cvserve") -> set[str]:
    """The distributions `pip install cvserve` (no extras) brings, normalised names."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_cvserve_snippets_import_only_what_its_install_has() -> None:
    """A snippet the README runs in cvserve's .venv imports only the standard library and
    what `pip install -e .` installs: the test extra's packages (requests...) do not count."""
    from packaging.utils import canonicalize_name

    closure = _install_closure()
    owners = importlib.metadata.packages_distributions()
    for block in PYTHON:
        if CLIENT_IMPORTS.search(block.code):
            continue
        for node in ast.walk(ast.parse(block.code)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in (n.split(".")[0] for n in names):
                if name in sys.stdlib_module_names or name == "cvserve":
                    continue
                dists = {canonicalize_name(d) for d in owners.get(name, [])}
                assert dists & closure, f"{block.id} imports {name}, not in cvserve's install"


@dataclass
class Site:
    url: str
    cwd: Path
    photo_url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("readme")
    work, store_dir, cwd = tmp / "work", tmp / "models", tmp / "cwd"
    work.mkdir()
    cwd.mkdir()
    store = ModelStore(store_dir)
    import_model(_det_model(work / "det.onnx"), "coco-detect/1", store)
    import_model(_seg_model(work / "seg.onnx"), "coco-segment/1", store)
    import_model(_pose_model(work / "pose.onnx"), "people-pose/1", store)
    import_model(_cls_model(work / "cls.onnx"), "imagenet/1", store)
    import_model(_sem_folder(work / "sem"), "salient/1", store)
    write_sam_model(store_dir, "mobilesam/1", encoder_work=1)
    for i, name in enumerate(PHOTOS):
        cv2.imwrite(str(cwd / name), sample_image(640, 480, seed=i)[:, :, ::-1])
    for folder in ("photos", "shots"):  # `cvserve predict photos/` and "shots/*.jpg"
        (cwd / folder).mkdir()
        for name in PHOTOS[:2]:
            shutil.copy(cwd / name, cwd / folder / name)
    # The `?image=URL` example's photo, served from here (the server admits 127.0.0.1).
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(cwd))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    photo_url = f"http://127.0.0.1:{files.server_address[1]}/dog.jpg"
    proc, url = serve_subprocess(store_dir, "--allow-url-host", "127.0.0.1")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # cvserve
    env["CVSERVE_MODELS_DIR"] = str(store_dir)  # `cvserve predict` in-process reads this store
    env["CVSERVE_DATA_DIR"] = str(tmp / "data")
    try:
        yield Site(url, cwd, photo_url, env)
    finally:
        stop(proc)
        files.shutdown()


def _as_run(code: str, site: Site) -> str:
    return code.replace(README_URL, site.url).replace(PHOTO_URL, quote(site.photo_url, safe=""))


def _run(cmd: list[str], site: Site, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=site.cwd, env=env or site.env, capture_output=True,
                          text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


@pytest.mark.parametrize("block", CURL, ids=[b.id for b in CURL])
def test_shell_example(block: Block, site: Site) -> None:
    out = _run(["bash", "-e", "-o", "pipefail", "-c", _as_run(block.code, site)], site)
    if "curl " in block.code and "format=image" not in block.code:
        assert out.strip(), "the example printed nothing"
        assert '"message"' not in out and "Failed" not in out, out[-2000:]
    if block.heading == "Promptable segmentation jobs":
        assert "Completed" in out.splitlines() and out.splitlines()[-1] not in ("null", ""), out
    if "format=image" in block.code:
        assert (site.cwd / "out.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    if "cvserve predict" in block.code:
        assert (site.cwd / "out").is_dir() and any((site.cwd / "out").iterdir())


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_example(block: Block, site: Site, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(_as_run(block.code, site))
    if CLIENT_IMPORTS.search(block.code):
        python = clients_python()
        if python is None:
            pytest.skip(
                "could not build .cache/clients-venv (tests/support/clients-requirements.txt)"
            )
        env = {k: v for k, v in site.env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        out = _run([str(python), str(script)], site, env)
    else:  # cvserve's own environment: the interpreter running these tests
        out = _run([sys.executable, str(script)], site)
    if "print(" in block.code:
        assert out.strip(), "the example printed nothing"
