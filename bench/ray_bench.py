"""Ray Serve beside plain `cvserve serve`: the same model, photo and machine, over HTTP.

    python bench/ray_bench.py                      # yolov8n, 640x480, c=1 and c=8
    python bench/ray_bench.py --duration 10 --photo 1920x1080

Layouts: plain `cvserve serve` (its auto lanes), `--ray local` with one model replica
holding every core, and with two replicas of one core each. Reports images/s and p50 at
each concurrency, each Ray layout's ratio to plain, and Ray's own cost per request (its c=1
p50 minus plain's). Needs `pip install 'cvserve[ray]'` and the bench models
(`bench/models.py`, see bench/README.md).
"""

from __future__ import annotations

import argparse
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
from common import MODELS_DIR, RESULTS_DIR, cores  # noqa: E402
from run import free_port, http_measure, model_id, prepare_store  # noqa: E402

LAYOUTS = {
    "plain": [],
    "plain --workers 1": ["--workers", "1"],
    "ray 1x all cores": ["--ray", "local", "--replicas", "1", "--replica-cpus", str(cores())],
    "ray 2x 1 core": ["--ray", "local", "--replicas", "2", "--replica-cpus", "1"],
}


@contextlib.contextmanager
def server(store: Path, data: Path, extra: list[str]) -> Iterator[tuple[int, int]]:
    port = free_port()
    env = dict(os.environ, CVSERVE_DATA_DIR=str(data), CVSERVE_RAY_JOB_REPLICAS="0")
    cmd = [sys.executable, "-m", "cvserve.cli", "serve", "--port", str(port),
           "--models-dir", str(store), "--no-pull", "--log-level", "warning", *extra]  # fmt: skip
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
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {' '.join(cmd)}")
            time.sleep(0.5)
        yield port, proc.pid
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
    args = p.parse_args()
    index = json.loads((MODELS_DIR / "index.json").read_text())
    photo = MODELS_DIR / index["photos"][args.photo]
    tmp = Path(tempfile.mkdtemp(prefix="cvserve-raybench-"))
    prepare_store(tmp / "store", [args.model])
    path = f"/{model_id(args.model)}"
    results: dict[str, dict[str, dict]] = {}
    for name, extra in LAYOUTS.items():
        with server(tmp / "store", tmp / name.replace(" ", "-"), extra) as (port, pid):
            httpx.post(f"http://127.0.0.1:{port}{path}", content=photo.read_bytes(), timeout=120)
            results[name] = {
                f"c{c}": http_measure(port, pid, path, photo, c, args.duration)
                for c in args.concurrency
            }
        print(f"{name}: " + ", ".join(
            f"c={c} {results[name][f'c{c}'].get('tput', float('nan')):.1f} img/s "
            f"p50 {results[name][f'c{c}'].get('p50_ms', float('nan')):.1f} ms"
            for c in args.concurrency
        ), file=sys.stderr)  # fmt: skip
    plain = results["plain"]
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cores": cores()},
        "model": args.model,
        "photo": args.photo,
        "duration_s": args.duration,
        "results": results,
        "ratios": {
            name: {
                f"c{c}": {
                    "tput_vs_plain": r[f"c{c}"]["tput"] / plain[f"c{c}"]["tput"],
                    "p50_minus_plain_ms": r[f"c{c}"]["p50_ms"] - plain[f"c{c}"]["p50_ms"],
                }
                for c in args.concurrency
            }
            for name, r in results.items()
            if name != "plain"
        },
    }
    out = args.out or RESULTS_DIR / f"ray-{report['date'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("| layout | " + " | ".join(
        f"c={c} img/s | c={c} p50 ms | c={c} vs plain" for c in args.concurrency
    ) + " |")  # fmt: skip
    print("|---|" + "---|---|---|" * len(args.concurrency))
    for name, r in results.items():
        cells = []
        for c in args.concurrency:
            m = r[f"c{c}"]
            ratio = m["tput"] / plain[f"c{c}"]["tput"]
            cells += [f"{m['tput']:.1f}", f"{m['p50_ms']:.1f}", f"{ratio:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nreport: {out}")


if __name__ == "__main__":
    main()
