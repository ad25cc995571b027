"""The CI guard itself: a skipped headline test fails under CI=true, other skips stay skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.strict_skips import is_headline

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_web.py").write_text(
        "import pytest\n\ndef test_page():\n    pytest.skip('no Chromium found')\n"
    )
    (tmp_path / "test_client.py").write_text(
        "import pytest\n\n"
        "def test_to_supervision():\n    pytest.importorskip('no_such_module_xyz')\n\n"
        "def test_other():\n    pytest.skip('fine to skip')\n\n"
        "@pytest.mark.xfail(reason='known')\ndef test_xfail():\n    raise AssertionError\n"
    )
    (tmp_path / "test_clients_curl.py").write_text(
        "import pytest\n\npytest.importorskip('no_such_module_xyz')\n\ndef test_x():\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.support.strict_skips", "-p", "no:cacheprovider",
         "-rs", "--continue-on-collection-errors", "-q", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_headline_skips_fail_under_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, "true")
    assert r.returncode == 1, r.stdout
    assert "2 failed, 1 skipped, 1 xfailed, 1 error" in r.stdout, r.stdout
    assert "no Chromium found" in r.stdout and "no_such_module_xyz" in r.stdout
    assert "with CI=true a headline feature must run" in r.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_skips_stay_skips_outside_ci(tmp_path: Path, ci: str | None) -> None:
    r = _run(tmp_path, ci)
    assert r.returncode == 0, r.stdout
    assert "4 skipped, 1 xfailed" in r.stdout, r.stdout
    assert "SKIPPED" in r.stdout and "no Chromium found" in r.stdout  # -rs: reasons shown


def test_which_tests_are_headline() -> None:
    assert is_headline("tests/test_clients_sdk.py::test_detect[x]")
    assert is_headline("tests/test_web.py")
    assert is_headline("tests/test_ultralytics_parity.py::test_boxes[yolov8n]")
    assert is_headline("tests/test_client.py::test_to_supervision")
    assert not is_headline("tests/test_client.py::test_to_supervision_without_the_package")
    assert not is_headline("tests/test_sam_model.py::test_real_mobilesam")
    # The real-model tests (issue 21, point 9): a skip of them fails CI.
    assert is_headline(
        "tests/test_sam_model.py::test_real_mobilesam_point_on_the_cat_covers_the_cat"
    )
    assert is_headline(
        "tests/test_composite_sam.py::test_real_coco_segment_masks_equal_one_segment_per_box"
    )
