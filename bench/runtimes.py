"""Each model's latency on each runtime and precision, with its agreement with ONNX Runtime.

    .venv/bin/python bench/runtimes.py [ONNX files or store model folders...] [--threads 1 2]

Default: the bench models (bench/models.py) and the store's models under
$CVSERVE_MODELS_DIR (or ~/.local/share/cvserve/models). For each file and thread count:
ONNX Runtime f32 (cvserve's own session settings), OpenVINO f32 and OpenVINO bf16, each the
median and best of interleaved runs on the model's check input, and each OpenVINO output's
agreement with ONNX Runtime's (`max_rel`: largest |difference| / the output's largest
magnitude; `exact`: the rule `runtime: auto` applies). What `auto` would choose is printed
too. bf16 is never exact; its agreement is how far off it is, for an opt-in decision.

    .venv/bin/python bench/runtimes.py --store DIR [--rounds 5] [--no-quantize]

The zoo mode (bench/zoo_runtimes.py): the seven zoo models of a store, loaded through the
store as the server loads them, on ONNX Runtime f32, OpenVINO f32 and bf16 and int8, on the
zoo's real photos: latency of the whole call and of the bare runs, agreement with ONNX
Runtime f32 in task terms, load time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_runtimes  # noqa: E402
from common import MODELS_DIR, RESULTS_DIR  # noqa: E402

from cvserve.models.backends import choose  # noqa: E402
from cvserve.models.backends.onnxruntime import open_session  # noqa: E402
from cvserve.models.backends.openvino import OpenVinoSession, version  # noqa: E402


def files(args: list[str]) -> list[Path]:
    if args:
        return [Path(a) / "model.onnx" if Path(a).is_dir() else Path(a) for a in args]
    found = sorted(MODELS_DIR.glob("*.onnx"))
    store = Path(os.environ.get("CVSERVE_MODELS_DIR", Path.home() / ".local/share/cvserve/models"))
    found += sorted(store.glob("*/*/*.onnx"))
    return found


def measure(path: Path, threads: int, runs: int, budget_s: float) -> dict:
    sessions = {
        "onnxruntime f32": open_session(path, threads),
        "openvino f32": OpenVinoSession(path, threads, "f32"),
        "openvino bf16": OpenVinoSession(path, threads, "bf16"),
    }
    feeds = choose.check_feeds(list(sessions["onnxruntime f32"].get_inputs()))
    outs = {k: s.run(None, feeds) for k, s in sessions.items()}  # warm-up and agreement
    times: dict[str, list[float]] = {k: [] for k in sessions}
    t_end = time.perf_counter() + budget_s
    for i in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[k].append((time.perf_counter() - t0) * 1e3)
        if i >= 2 and time.perf_counter() > t_end:
            break
    ref = outs["onnxruntime f32"]
    rec: dict = {}
    for k, ts in times.items():
        rec[k] = {"p50_ms": float(np.median(ts)), "best_ms": float(min(ts)), "runs": len(ts)}
        if k != "onnxruntime f32":
            a = choose.agreement(ref, outs[k])
            rec[k].update(exact=a["equal"], max_rel=a["max_rel"], max_abs=a["max_abs"])
            rec[k]["speedup_p50"] = rec["onnxruntime f32"]["p50_ms"] / rec[k]["p50_ms"]
    f32 = rec["openvino f32"]
    faster = f32["best_ms"] <= rec["onnxruntime f32"]["best_ms"] * choose.MARGIN
    rec["auto"] = "openvino" if f32["exact"] and faster else "onnxruntime"
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*")
    p.add_argument("--threads", type=int, nargs="*", default=[1, os.cpu_count() or 1])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--budget", type=float, default=8.0, help="seconds per model and thread count")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--store", type=Path, default=None, help="the zoo mode: bench/zoo_runtimes.py")
    zoo_runtimes.add_arguments(p)
    args = p.parse_args()
    if args.store is not None:
        zoo_runtimes.finish(args, zoo_runtimes.run(args))
        return
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "openvino": version(),
        "loadavg_at_start": os.getloadavg(),
        "results": {},
    }
    print(
        "| model | threads | ORT f32 ms | OV f32 ms (x, max rel, exact) | OV bf16 ms (x, max rel) | auto |"
    )
    print("|---|---|---|---|---|---|")
    for path in files(args.models):
        name = path.stem if path.name != "model.onnx" else f"{path.parent.parent.name}"
        for threads in sorted(set(args.threads)):
            r = measure(path, threads, args.runs, args.budget)
            report["results"][f"{name} t{threads}"] = r
            o, f, b = r["onnxruntime f32"], r["openvino f32"], r["openvino bf16"]
            print(
                f"| {name} | {threads} | {o['p50_ms']:.1f} | {f['p50_ms']:.1f} "
                f"({f['speedup_p50']:.2f}x, {f['max_rel']:.1g}, {'yes' if f['exact'] else 'no'}) | "
                f"{b['p50_ms']:.1f} ({b['speedup_p50']:.2f}x, {b['max_rel']:.1g}) | {r['auto']} |",
                flush=True,
            )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS_DIR / f"runtimes-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {out}")


if __name__ == "__main__":
    main()
