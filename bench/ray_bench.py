"""Ray Serve beside plain `cvserve serve`: the same model, photo and machine, over HTTP.

    python bench/ray_bench.py                      # yolov8n, 640x480, c=1 and c=8
    python bench/ray_bench.py --duration 10 --photo 1920x1080

Layouts: plain `cvserve serve` (its auto lanes), `--ray local` with one model replica
holding every core, and with two replicas of one core each; and the floor, a bare Ray Serve
app of the same shape that runs no model (`ray_floor.py`). Reports images/s, p50 and the
CPU per request of every process of the layout (the server, its Ray processes) at each
concurrency, each Ray layout's ratio to plain, and cvserve's own CPU per image on the Ray
path: its CPU per request, less plain cvserve's, less the floor's. Needs
`pip install 'cvserve[ray]'` and the bench models (`bench/models.py`, bench/README.md).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS_DIR, RESULTS_DIR, cores, cpu_seconds  # noqa: E402
from run import free_port, http_measure, model_id, prepare_store  # noqa: E402

LAYOUTS = {
    "plain": [],
    "plain --workers 1": ["--workers", "1"],
    "ray split 1x all cores": [
        "--ray", "local", "--ray-layout", "split", "--replicas", "1",
        "--replica-cpus", str(cores()),
    ],
    "ray split 2x 1 core": [
        "--ray", "local", "--ray-layout", "split", "--replicas", "2", "--replica-cpus", "1",
    ],
    "ray colocated 1x all cores": [
        "--ray", "local", "--ray-layout", "colocated", "--replicas", "1",
        "--replica-cpus", str(cores()),
    ],
}  # fmt: skip


FLOOR = "ray floor (bare Serve, no model)"
MARK = "CVSERVE_BENCH_LAYOUT"  # inherited by every process of a layout, Ray's workers too


def layout_cpu(token: str) -> dict[str, float]:
    """CPU seconds so far of every live process marked with `token` (see MARK), by role:
    Serve's proxy, each deployment's replicas (`ingress`, `models`, `cvserve`, ...), the
    rest (the server or driver process, Ray's own daemons)."""
    marker = f"{MARK}={token}".encode()
    roles: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                role = _role((entry / "cmdline").read_bytes().decode(errors="replace"))
                roles[role] = roles.get(role, 0.0) + cpu_seconds(entry.name)
    return roles


def _role(cmdline: str) -> str:
    if cmdline.startswith("ray::ProxyActor"):
        return "proxy"
    if cmdline.startswith("ray::ServeReplica:"):
        return cmdline.split("\0", 1)[0].rsplit(":", 1)[-1].strip()
    return "other"


@contextlib.contextmanager
def server(store: Path, data: Path, extra: list[str]) -> Iterator[tuple[int, str]]:
    port = free_port()
    token = f"{os.getpid()}-{port}"
    env = dict(os.environ, CVSERVE_DATA_DIR=str(data), CVSERVE_RAY_JOB_REPLICAS="0")
    env[MARK] = token
    cmd = [sys.executable, "-m", "cvserve.cli", "serve", "--port", str(port),
           "--models-dir", str(store), "--no-pull", "--log-level", "warning", *extra]  # fmt: skip
    if extra == ["floor"]:
        floor = str(Path(__file__).with_name("ray_floor.py"))
        cmd = [sys.executable, floor, "--port", str(port), "--cpus", str(cores())]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
                if (
                    extra == ["floor"]
                    and httpx.post(
                        f"http://127.0.0.1:{port}/", content=b"aGk=", timeout=5
                    ).status_code
                    == 200
                ):
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {' '.join(cmd)}")
            time.sleep(0.5)
        yield port, token
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="yolov8n")
    p.add_argument("--photo", default="640x480")
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--layouts", nargs="+", metavar="NAME",
        help="only these layouts (plain and the floor always run), e.g. 'ray colocated 1x all cores'",
    )  # fmt: skip
    args = p.parse_args()
    index = json.loads((MODELS_DIR / "index.json").read_text())
    photo = MODELS_DIR / index["photos"][args.photo]
    tmp = Path(tempfile.mkdtemp(prefix="cvserve-raybench-"))
    prepare_store(tmp / "store", [args.model])
    # The hosted API's usual body: the JPEG in base64, as a form body (the floor decodes it).
    body = tmp / "photo.b64"
    body.write_bytes(base64.b64encode(photo.read_bytes()))
    path = f"/{model_id(args.model)}"
    results: dict[str, dict[str, dict]] = {}
    chosen = {
        k: v for k, v in LAYOUTS.items() if not args.layouts or k == "plain" or k in args.layouts
    }
    for name, extra in {**chosen, FLOOR: ["floor"]}.items():
        route = "/" if extra == ["floor"] else path
        with server(tmp / "store", tmp / name.replace(" ", "-"), extra) as (port, token):
            httpx.post(f"http://127.0.0.1:{port}{route}", content=body.read_bytes(), timeout=120)
            results[name] = {}
            for c in args.concurrency:
                cpu0 = layout_cpu(token)
                measured = http_measure(port, "self", route, body, c, args.duration)
                requests = measured.get("tput", 0.0) * args.duration + 3  # + the warm-up
                cpu1 = layout_cpu(token)
                by_role = {k: (v - cpu0.get(k, 0.0)) / requests * 1e3 for k, v in cpu1.items()}
                measured["layout_cpu_ms"] = sum(by_role.values())
                measured["cpu_ms_by_role"] = by_role
                results[name][f"c{c}"] = measured
        print(f"{name}: " + ", ".join(
            f"c={c} {results[name][f'c{c}'].get('tput', float('nan')):.1f} img/s "
            f"p50 {results[name][f'c{c}'].get('p50_ms', float('nan')):.1f} ms"
            for c in args.concurrency
        ), file=sys.stderr)  # fmt: skip
    plain = results["plain"]
    floor = results[FLOOR]
    own = {  # cvserve's CPU per image on the Ray path beyond plain cvserve's and Ray's own
        name: {
            f"c{c}": r[f"c{c}"]["layout_cpu_ms"]
            - plain[f"c{c}"]["layout_cpu_ms"]
            - floor[f"c{c}"]["layout_cpu_ms"]
            for c in args.concurrency
        }
        for name, r in results.items()
        if name.startswith("ray ") and name != FLOOR
    }
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cores": cores()},
        "model": args.model,
        "photo": args.photo,
        "duration_s": args.duration,
        "results": results,
        "cvserve_own_ray_cpu_ms": own,
        "ratios": {
            name: {
                f"c{c}": {
                    "tput_vs_plain": r[f"c{c}"]["tput"] / plain[f"c{c}"]["tput"],
                    "p50_minus_plain_ms": r[f"c{c}"]["p50_ms"] - plain[f"c{c}"]["p50_ms"],
                }
                for c in args.concurrency
            }
            for name, r in results.items()
            if name not in ("plain", FLOOR)
        },
    }
    out = args.out or RESULTS_DIR / f"ray-{report['date'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("| layout | " + " | ".join(
        f"c={c} img/s | c={c} p50 ms | c={c} vs plain | c={c} CPU ms/img"
        for c in args.concurrency
    ) + " |")  # fmt: skip
    print("|---|" + "---|---|---|---|" * len(args.concurrency))
    for name, r in results.items():
        cells = []
        for c in args.concurrency:
            m = r[f"c{c}"]
            ratio = m["tput"] / plain[f"c{c}"]["tput"]
            cells += [f"{m['tput']:.1f}", f"{m['p50_ms']:.1f}", f"{ratio:.2f}"]
            cells.append(f"{m['layout_cpu_ms']:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, r in results.items():
        roles = r[f"c{args.concurrency[-1]}"]["cpu_ms_by_role"]
        print(f"CPU ms/img by process at c={args.concurrency[-1]}, {name}: " + ", ".join(
            f"{role} {ms:.1f}" for role, ms in sorted(roles.items())
        ))  # fmt: skip
    for name, per_c in own.items():
        print(f"cvserve's own CPU on the Ray path, {name}: " + ", ".join(
            f"c={c} {ms:.1f} ms/img" for c, ms in per_c.items()
        ))  # fmt: skip
    print(f"\nreport: {out}")


if __name__ == "__main__":
    main()
