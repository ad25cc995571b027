"""Operator output (issue 14, point 4): `models list` names each part's licence of a
composite model, and decoder warnings for corrupt images never reach stderr raw."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
from typer.testing import CliRunner

from cvserve.cli import app
from cvserve.models.base import Task
from cvserve.models.manifest import MANIFEST_NAME, Manifest
from cvserve.models.store import ModelStore
from tests.support.hostile_support import DET_ID, add_detector, encode
from tests.support.live_server import serve_subprocess, stop

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


def test_models_list_source_and_classes_cells(tmp_path: Path) -> None:
    """Issue 21, point 8: a composite's source names its parts (not `(composite of ...) 1`),
    and a model without classes shows `-` (not `0:`)."""
    _composite_store(tmp_path, recorded_parts=False)
    result = CliRunner().invoke(app, ["models", "list", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:]]
            for line in result.output.splitlines() if line.count("│") > 4 and "/1" in line}  # fmt: skip
    assert rows["seg/1"][3] == "composite of det/1 + sam/1", rows["seg/1"]
    assert rows["det/1"][3] == "det-pkg 0.4.4" and rows["det/1"][1] == "1: cat"
    assert rows["sam/1"][1] == "-", rows["sam/1"]
    assert "(composite of" not in result.output and "0:" not in result.output


# -- decoder noise ---------------------------------------------------------------------------
def _noisy_images() -> list[tuple[str, bytes, int, str | None]]:
    """(name, image, status, what the log line names) for images whose decoders printed
    straight to stderr before: OpenCV's libpng and libjpeg, its own logger, Pillow's libtiff
    and its Python warnings."""
    png = encode("PNG", 48, 32)
    jpeg = encode("JPEG", 48, 32)
    tiff = bytearray(encode("TIFF", 40, 40, compression="tiff_lzw"))
    for i in range(8, 40):  # the LZW strip: libtiff's decoder complains
        tiff[i] ^= 0x5A
    return [
        ("png-idat", png[:60] + b"\x00" * 40 + png[100:], 400, "libpng error: IDAT"),
        ("png-truncated", png[:100], 400, None),  # OpenCV's "[ WARN:0@...] ... incomplete"
        ("bmp-truncated", encode("BMP", 40, 40)[:60], 400, None),  # its "[ERROR:0@...]"
        # A tolerated one: decoded (200), the extraneous bytes before EOI reported.
        ("jpeg-extraneous", jpeg[:-2] + b"\x00\x11\x22" + jpeg[-2:], 200, "Corrupt JPEG data"),
        ("tiff-lzw", bytes(tiff), 400, "Using code not yet in table"),
        ("tiff-truncated", encode("TIFF", 40, 40)[:40], 400, "UserWarning: Corrupt EXIF data"),
    ]


RAW = re.compile(
    r"libpng|Corrupt JPEG|extraneous bytes|\[ ?WARN:|\[ERROR:|tempfile\.tif|TIFF|"
    r"UserWarning|warnings\.warn"
)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ [\w.]+ \[(?P<rid>[^\]]*)\] ")


def test_decoder_messages_reach_the_log_with_the_request_id_never_raw_stderr(
    tmp_path: Path,
) -> None:
    """A real `cvserve serve`: the images that made libpng, libjpeg, libtiff, OpenCV and
    Pillow print to stderr answer as before; their messages are log lines carrying the
    request id (one per decode), and nothing of them reaches stderr raw."""
    root = tmp_path / "models"
    add_detector(root)
    images = _noisy_images()
    proc, url = serve_subprocess(root)
    try:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            for name, data, status, _ in images:
                r = http.post(f"/{DET_ID}", content=data, headers={"X-Request-ID": f"n-{name}"})
                assert r.status_code == status, f"{name}: {r.status_code} {r.text[:200]}"
                assert r.headers["X-Request-ID"] == f"n-{name}"
    finally:
        stop(proc)
    log = proc.log_path.read_text()  # type: ignore[attr-defined]  # stdout and stderr
    raw = [ln for ln in log.splitlines() if RAW.search(ln) and not LOG_LINE.match(ln)]
    assert not raw, "\n".join(raw)
    lines = log.splitlines()
    for name, _, _, mention in images:
        mine = [ln for ln in lines if (m := LOG_LINE.match(ln)) and m["rid"] == f"n-{name}"]
        if mention is None:
            continue
        assert any(mention in ln for ln in mine), f"{name}: {mine}\n{log[-3000:]}"
        reported = [ln for ln in mine if "image decoder reported" in ln]
        assert len(reported) <= 1, reported  # once per decode, however many lines it printed


def test_a_c_line_outside_any_decode_passes_through_unchanged(tmp_path: Path) -> None:
    """Only decoders' lines are taken: anything else the C stream carries reaches fd 2 as
    it was. A subprocess: the capture changes process-wide state, never done in tests."""
    code = (
        "import ctypes, time\n"
        "from cvserve import native_log\n"
        "assert native_log.capture()\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.fputs(b'an unrelated C line\\n', ctypes.c_void_p.in_dll(libc, 'stderr'))\n"
        "time.sleep(0.3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "an unrelated C line\n"
