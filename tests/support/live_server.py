"""A real cvserve server for tests that speak HTTP over a socket (SDK, CLI, browser).

`LiveServer(store_dir, **settings)` runs uvicorn in a background thread on a free port of
127.0.0.1; `serve_subprocess(store_dir, ...)` runs `cvserve serve --no-pull` as a process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            log_path = getattr(proc, "log_path", None)
            out = log_path.read_text() if log_path is not None else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {out}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not become ready in {timeout} s")


class LiveServer:
    """uvicorn serving create_app(Settings(models_dir=store_dir, ...)) in a thread."""

    def __init__(self, store_dir: Path, **overrides: Any) -> None:
        import uvicorn

        from cvserve.http.app import create_app
        from cvserve.settings import Settings

        fields: dict[str, Any] = {
            "data_dir": store_dir.parent / "data",
            "models_dir": store_dir,
            "auto_pull": False,
            "workers": 1,
            "intra_op_threads": 1,
        }
        fields.update(overrides)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(Settings(**fields)),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def serve_subprocess(
    store_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    new_session: bool = False,
) -> tuple[subprocess.Popen, str]:
    """`cvserve serve --no-pull` on a free port; returns (process, base URL) once ready."""
    port = free_port()
    full_env = dict(os.environ)
    full_env.update(
        {
            "CVSERVE_DATA_DIR": str(store_dir.parent / "data"),
            "CVSERVE_AUTO_PULL": "false",
            "CVSERVE_INTRA_OP_THREADS": "1",
        }
    )
    full_env.update(env or {})
    cmd = [
        sys.executable, "-m", "cvserve.cli", "serve", "--no-pull", "--host", "127.0.0.1",
        "--port", str(port), "--models-dir", str(store_dir), "--log-level", "warning", *extra,
    ]  # fmt: skip
    log = open(store_dir.parent / f"server-{port}.log", "w")  # noqa: SIM115 - outlives us
    proc = subprocess.Popen(
        cmd,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,  # its own process group, to kill as a whole
    )
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=timeout, proc=proc)
    except Exception:
        proc.kill()
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
