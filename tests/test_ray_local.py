"""`cvserve serve --ray local` owns its Ray instance: two of them on one machine (different
ports, different data dirs) serve side by side; after a SIGKILL of one's whole process group
no Ray process of it is left (or the next start on its data dir stops them), and a SIGTERM
to the other's whole group (Ctrl-C, `timeout`) stops it, and all of its Ray, in bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'cvserve[ray]'")

from tests.conftest import (
    add_model,  # noqa: E402
    make_store,  # noqa: E402
)
from tests.support.live_server import serve_subprocess, stop  # noqa: E402
from tests.support.synthetic import jpeg_bytes, rect_finder_model, rect_image, ultralytics_meta  # noqa: E402

PHOTO = jpeg_bytes(rect_image(640, 480, (100, 100, 300, 200)), quality=95)


def ray_processes(temp_dir: str) -> list[int]:
    """The instance's live processes: raylet, GCS and every worker (marked in their env)."""
    from cvserve.ray.launch import instance_processes

    return instance_processes(temp_dir)


def start(tmp: Path, name: str) -> tuple[subprocess.Popen, str, Path]:
    data = tmp / name
    proc, url = serve_subprocess(
        tmp / "models",
        "--ray",
        "local",
        env={"CVSERVE_DATA_DIR": str(data), "CVSERVE_RAY_JOB_REPLICAS": "0"},
        timeout=180.0,
        new_session=True,
    )
    return proc, url, data


def test_two_local_instances_and_sigkill_leaves_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    meta = ultralytics_meta("detect", ["rect"])
    add_model(store, "rect/1", rect_finder_model(tmp_path / "r.onnx", metadata=meta))
    store.close()
    first, first_url, first_data = start(tmp_path, "a")
    second = None
    try:
        second, second_url, _ = start(tmp_path, "b")
        for url in (first_url, second_url):
            r = httpx.post(f"{url}/rect/1", content=PHOTO, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["width"] == pytest.approx(200, abs=2)
        pid_text, temp_dir = (first_data / "ray-local.pid").read_text().split()
        assert ray_processes(temp_dir), "the first server's Ray processes were not found"
        os.killpg(first.pid, signal.SIGKILL)  # the whole process group, as a crash would
        first.wait(timeout=10)
        deadline = time.monotonic() + 30
        while ray_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = ray_processes(temp_dir)
        if left:  # Ray's own reaper did not get them all: the next start must
            again, again_url, _ = start(tmp_path, "a")
            try:
                assert ray_processes(temp_dir) == [], "a restart did not clean up"
                assert httpx.get(f"{again_url}/healthz", timeout=10).status_code == 200
            finally:
                stop(again)
        # the other instance never noticed
        assert httpx.post(f"{second_url}/rect/1", content=PHOTO, timeout=60).status_code == 200
        _, second_temp = (tmp_path / "b" / "ray-local.pid").read_text().split()
        assert ray_processes(second_temp)
        os.killpg(second.pid, signal.SIGTERM)  # Ray's own processes get it too
        second.wait(timeout=90)
        assert ray_processes(second_temp) == []
        assert not Path(second_temp).exists()
    finally:
        if first.poll() is None:
            stop(first)
        if second is not None:
            stop(second)
