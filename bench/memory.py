"""The zoo's resident memory: `cvserve serve` holding the seven default models, one real
photo each, RSS summed over the server's processes.

    python bench/memory.py --models-dir DIR     # a store with the DEFAULT_SET pulled
    python bench/memory.py --models-dir DIR --json out.json --workers 0

The server starts on the store, then each model gets one request (the hosted route; for
SAM the sync segment route with a box) and a second, timed one; after each the resident
set of the server and its children is read. Prints each model's growth and the total
(goal: at most 700 MB with all seven loaded, cvserve's default layout).

Photos come from the zoo's registry packages (`cvserve.zoo.photos`), read through a
package cache: `--packages` (default `$CVSERVE_DATA_DIR/cache`, else the test cache
~/.cache/cvserve-test/packages).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6  # the goal is in MB (10^6 bytes); MiB are printed beside it

# model -> photo (cvserve.zoo.photos names)
MODELS: dict[str, str] = {
    "faces": "faces",
    "salient": "chelsea",
    "coco-detect": "street",
    "imagenet": "chelsea",
    "people-pose": "astronaut",
    "mobilesam": "street",
    "coco-segment": "street",
}
GOAL_MB = 700


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def tree_rss(pid: int) -> tuple[int, int]:
    """(resident bytes summed over pid and its descendants, process count)."""
    total, count, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    count += 1
                    break
        except OSError:
            continue
        todo.extend(_children(p))
    return total, count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(port: int, path: str, body: bytes, content_type: str) -> tuple[int, bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t0 = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    resp = conn.getresponse()
    data = resp.read()
    dt = time.perf_counter() - t0
    conn.close()
    return resp.status, data, dt


def request_for(model: str, photo: bytes, size: tuple[int, int]) -> tuple[str, bytes, str]:
    if model == "mobilesam":
        w, h = size
        body = {
            "image": base64.b64encode(photo).decode(),
            "boundingBox": {"xMin": 0.25, "yMin": 0.25, "xMax": 0.6, "yMax": 0.75},
            "model": "mobilesam/1",
        }
        return (
            "/api/v1/projects/bench/context/vision/segment/sync",
            json.dumps(body).encode(),
            "application/json",
        )
    return f"/{model}/1", photo, "application/octet-stream"


def measure(
    store: Path, packages: Path, workers: int | None, models: list[str], extra: list[str]
) -> dict:
    import cv2
    import numpy as np

    from cvserve.zoo.packages import PackageCache
    from cvserve.zoo.photos import photo_bytes

    cache = PackageCache(packages)
    photos: dict[str, tuple[bytes, tuple[int, int]]] = {}
    for name in set(MODELS[m] for m in models):
        data = photo_bytes(cache, name)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        photos[name] = (data, (img.shape[1], img.shape[0]))

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "cvserve.cli",
        "serve",
        "--port",
        str(port),
        "--models-dir",
        str(store),
        "--no-pull",
        "--log-level",
        "warning",
        *extra,
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ)
    data_dir = tempfile.mkdtemp(prefix="cvserve-memory-")
    env["CVSERVE_DATA_DIR"] = data_dir  # jobs and files: a scratch folder
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    report: dict = {"models": {}, "workers": workers, "extra": extra}
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None:
                assert proc.stderr is not None
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        time.sleep(1.0)
        base, nproc = tree_rss(proc.pid)
        report["start_mb"] = base / MB
        report["processes"] = nproc
        prev = base
        for model in models:
            data, size = photos[MODELS[model]]
            path, body, ctype = request_for(model, data, size)
            status, out, first = post(port, path, body, ctype)
            if status != 200:
                raise RuntimeError(f"{model}: HTTP {status}: {out[:500]!r}")
            if model == "mobilesam":  # a new box: the embedding is cached, the decoder runs
                body = body.replace(b'"xMax": 0.6', b'"xMax": 0.65')
            status, out, warm = post(port, path, body, ctype)
            time.sleep(0.3)
            now, nproc = tree_rss(proc.pid)
            report["models"][model] = {
                "growth_mb": (now - prev) / MB,
                "first_s": first,
                "warm_ms": warm * 1000,
            }
            prev = now
        total, nproc = tree_rss(proc.pid)
        report["total_mb"] = total / MB
        report["total_mib"] = total / 2**20
        report["processes"] = nproc
        report["goal_mb"] = GOAL_MB
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


def print_report(r: dict) -> None:
    print(f"server at start: {r['start_mb']:.0f} MB ({r['processes']} processes)")
    print(f"{'model':<14} {'growth':>9} {'first':>8} {'warm':>9}")
    for name, m in r["models"].items():
        print(f"{name:<14} {m['growth_mb']:>+7.0f}MB {m['first_s']:>7.2f}s {m['warm_ms']:>7.0f}ms")
    met = (
        "met"
        if r["total_mb"] <= r["goal_mb"]
        else f"missed by {r['total_mb'] - r['goal_mb']:.0f} MB"
    )
    print(
        f"total resident, {len(r['models'])} models: {r['total_mb']:.0f} MB "
        f"({r['total_mib']:.0f} MiB); goal {r['goal_mb']} MB: {met}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path, required=True)
    default_packages = (
        Path(os.environ["CVSERVE_DATA_DIR"]) / "cache"
        if os.environ.get("CVSERVE_DATA_DIR")
        else Path.home() / ".cache" / "cvserve-test" / "packages"
    )
    ap.add_argument("--packages", type=Path, default=default_packages)
    ap.add_argument("--workers", type=int, default=None, help="--workers for serve (default: auto)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("serve_args", nargs="*", help="more `cvserve serve` flags (after --)")
    a = ap.parse_args()
    r = measure(a.models_dir, a.packages, a.workers, a.models.split(","), a.serve_args)
    print_report(r)
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
