"""With CI=true, a skipped headline-feature test is a failure (a pytest plugin).

The official clients, the web page, Ultralytics parity, the supervision conversion and the
PostgreSQL stores skip when their tools are missing (a laptop without Chromium); in CI that would hide a
broken feature behind a green run, so there the skip fails with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from fnmatch import fnmatch
from pathlib import PurePosixPath
from typing import Any

import pytest

HEADLINE_FILES = (
    "test_clients_*.py",
    "test_web.py",
    "test_ultralytics_parity.py",
    "test_ray_*.py",
    "test_job_stores.py",  # the PostgreSQL half needs a real server (tests/support/postgres_server.py)
    "test_jobs_postgres.py",
    "test_backends.py",  # OpenVINO is in the test extra: auto, cancellation, equality
    "test_readme_examples.py",  # the official clients' snippets need .cache/clients-venv
    "test_streams*.py",  # video streams: PyAV, trackers, a real RTSP server (apt, scripts/test)
)
HEADLINE_TESTS = (
    "test_client.py::test_to_supervision",
    # The real models (tests/support/zoo_cache.py finds or pulls them): skipped, they prove nothing.
    "test_sam_model.py::test_real_mobilesam_point_on_the_cat_covers_the_cat",
    "test_composite_sam.py::test_real_coco_segment_masks_equal_one_segment_per_box",
)


def strict() -> bool:
    return os.environ.get("CI") == "true"


def is_headline(nodeid: str) -> bool:
    """Whether the test (or module) `nodeid` covers a feature CI must not skip."""
    path, _, rest = nodeid.partition("::")
    name = PurePosixPath(path).name
    if any(fnmatch(name, pattern) for pattern in HEADLINE_FILES):
        return True
    return f"{name}::{rest.split('[')[0]}" in HEADLINE_TESTS


def _reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: ...")
        return str(longrepr[2])
    return str(longrepr)


def _fail_if_headline_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    xfail = hasattr(report, "wasxfail")
    if report.skipped and not xfail and strict() and is_headline(report.nodeid):
        report.outcome = "failed"
        report.longrepr = (
            f"{report.nodeid} skipped, but with CI=true a headline feature must run: "
            f"{_reason(report.longrepr)}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator:
    outcome = yield
    _fail_if_headline_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator:
    outcome = yield  # a module-level importorskip (playwright missing) skips at collection
    _fail_if_headline_skip(outcome.get_result())
