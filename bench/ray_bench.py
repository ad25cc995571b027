"""Ray Serve beside plain `cvserve serve`: the same model, photo and machine, over HTTP.

    python bench/ray_bench.py                      # yolov8n, 640x480, c=1 and c=8
    python bench/ray_bench.py --duration 10 --photo 1920x1080
    python bench/ray_bench.py --rounds 3 --layouts "ray colocated 1x all cores"

Layouts: plain `cvserve serve` (its auto lanes), `--ray local` with one model replica
holding every core, and with two replicas of one core each; and the floors, bare Ray Serve
apps of each layout's shape that run no model (`ray_floor.py`: one hop for the colocated
layout, two for split). Reports images/s, p50 and the CPU per request of every process of
the layout (the server, its Ray processes) at each concurrency, each Ray layout's ratio to
plain, and cvserve's own CPU per image on the Ray path: its CPU per request, less plain
cvserve's, less Ray's (its shape's floor's CPU per request, with the floor's idle CPU per
second counted at the layout's images/s: `ray_cost`). With --rounds N the layouts take
turns N times and each figure is the median round's (each layout against plain's figure
of the same round). Needs
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
from statistics import median

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS_DIR, RESULTS_DIR, cores, cpu_seconds  # noqa: E402
from run import free_port, http_measure, model_id, prepare_store  # noqa: E402

SERVE_PROXY_TAG = ", Serve's proxy"
SERVE_PROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY=0"
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
    # Serve's Python proxy instead of its HAProxy ingress (the default where Ray ships it)
    SERVE_PROXY_TAG.join(("ray colocated 1x all cores", "")): [
        SERVE_PROXY_ENV, "--ray", "local", "--ray-layout", "colocated", "--replicas", "1",
        "--replica-cpus", str(cores()),
    ],
    # Serve's user code on the replica's main loop, beside the direct-ingress HTTP server
    "ray colocated 1x all cores, user code on Serve's loop": [
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0", "--ray", "local", "--ray-layout",
        "colocated", "--replicas", "1", "--replica-cpus", str(cores()),
    ],
    # Ray's periodic work thinned: the controller's loop 0.1 -> 0.5 s, each replica's metric
    # export 0.1 -> 1 s, Ray's own metrics off (an idle instance uses ~18% of a core)
    "ray colocated 1x all cores, quieter Ray": [
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5", "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS=1000",
        "RAY_enable_metrics_collection=0", "--ray", "local", "--ray-layout", "colocated",
        "--replicas", "1", "--replica-cpus", str(cores()),
    ],
    SERVE_PROXY_TAG.join(("ray split 1x all cores", "")): [
        SERVE_PROXY_ENV, "--ray", "local", "--ray-layout", "split", "--replicas", "1",
        "--replica-cpus", str(cores()),
    ],
}  # fmt: skip


# Ray Serve's own cost, a bare app of each layout's shape that runs no model (ray_floor.py).
FLOORS = {
    "ray floor, two hops (bare Serve, no model)": ["floor", "--hops", "2"],
    "ray floor, one hop (bare Serve, no model)": ["floor", "--hops", "1"],
    SERVE_PROXY_TAG.join(("ray floor, two hops", " (bare Serve, no model)")): [
        SERVE_PROXY_ENV, "floor", "--hops", "2",
    ],
    SERVE_PROXY_TAG.join(("ray floor, one hop", " (bare Serve, no model)")): [
        SERVE_PROXY_ENV, "floor", "--hops", "1",
    ],
}  # fmt: skip


def floor_of(layout: str) -> str:
    """The floor of a Ray layout's shape and ingress: colocated is one hop, split two."""
    return next(
        name
        for name in FLOORS
        if ("one hop" in name) == ("colocated" in layout)
        and (SERVE_PROXY_TAG in name) == (SERVE_PROXY_TAG in layout)
    )


def split_env(extra: list[str]) -> tuple[dict[str, str], list[str]]:
    """A layout's NAME=VALUE items (its environment), and its arguments."""
    is_env = ["=" in item and item[:1].isupper() for item in extra]
    env = dict(item.split("=", 1) for item, e in zip(extra, is_env, strict=True) if e)
    return env, [item for item, e in zip(extra, is_env, strict=True) if not e]


IDLE_S = 5.0  # how long each layout's CPU is read while it serves nothing
MARK = "CVSERVE_BENCH_LAYOUT"  # inherited by every process of a layout, Ray's workers too


def layout_cpu(token: str) -> dict[str, tuple[str, float]]:
    """By process id: the role and the CPU seconds so far of every live process marked
    with `token` (see MARK). Roles: Serve's proxy, each deployment's replicas (`ingress`,
    `models`, `cvserve`, ...), the rest (the server or driver process, Ray's daemons)."""
    marker = f"{MARK}={token}".encode()
    found: dict[str, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                role = _role((entry / "cmdline").read_bytes().decode(errors="replace"))
                found[entry.name] = (role, cpu_seconds(entry.name))
    return found


def cpu_by_role(
    before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each role used between two `layout_cpu` readings, process by process
    (a Ray worker's title names the method it runs, so a role is read per process, never
    matched across readings by title)."""
    used: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        used[role] = used.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return used


def _role(cmdline: str) -> str:
    program = cmdline.split("\0", 1)[0]
    if cmdline.startswith("ray::ProxyActor"):
        return "proxy"
    if program.endswith("/haproxy") or cmdline.startswith("ray::HAProxyManager"):
        return "haproxy"
    if cmdline.startswith("ray::ServeController"):
        return "controller"
    if program.endswith(("/raylet", "/gcs_server")):
        return "raylet+gcs"
    if cmdline.startswith("ray::ServeReplica:"):
        # "ray::ServeReplica:APP:DEPLOYMENT", with ".METHOD" while it runs one
        return program.rsplit(":", 1)[-1].split(".", 1)[0].strip()
    return "other"


@contextlib.contextmanager
def server(store: Path, data: Path, extra: list[str]) -> Iterator[tuple[int, str]]:
    port = free_port()
    token = f"{os.getpid()}-{port}"
    layout_env, extra = split_env(extra)
    env = dict(os.environ, CVSERVE_DATA_DIR=str(data), CVSERVE_RAY_JOB_REPLICAS="0")
    env.update(layout_env)
    env[MARK] = token
    cmd = [sys.executable, "-m", "cvserve.cli", "serve", "--port", str(port),
           "--models-dir", str(store), "--no-pull", "--log-level", "warning", *extra]  # fmt: skip
    if extra[:1] == ["floor"]:
        floor = str(Path(__file__).with_name("ray_floor.py"))
        cmd = [sys.executable, floor, "--port", str(port), "--cpus", str(cores()), *extra[1:]]
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
                    extra[:1] == ["floor"]
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


def measure_layout(
    tmp: Path,
    name: str,
    extra: list[str],
    path: str,
    body: Path,
    concurrency: list[int],
    duration: float,
) -> dict[str, dict]:
    """Start the layout, warm it with one request, read its CPU while idle (IDLE_S), then
    measure each concurrency in turn."""
    route = "/" if "floor" in extra else path
    measured_layout: dict[str, dict] = {}
    with server(tmp / "store", tmp / name.replace(" ", "-"), extra) as (port, token):
        httpx.post(f"http://127.0.0.1:{port}{route}", content=body.read_bytes(), timeout=120)
        time.sleep(2.0)  # the warm-up's own after-work (a load's report, caches) first
        cpu0 = layout_cpu(token)
        time.sleep(IDLE_S)
        idle = {k: v / IDLE_S * 1e3 for k, v in cpu_by_role(cpu0, layout_cpu(token)).items()}
        measured_layout["idle"] = {"cpu_ms_per_s": sum(idle.values()), "by_role": idle}
        for c in concurrency:
            cpu0 = layout_cpu(token)
            measured = http_measure(port, "self", route, body, c, duration)
            requests = measured.get("tput", 0.0) * duration + 3  # + the warm-up
            cpu1 = layout_cpu(token)
            by_role = {k: v / requests * 1e3 for k, v in cpu_by_role(cpu0, cpu1).items()}
            measured["layout_cpu_ms"] = sum(by_role.values())
            measured["cpu_ms_by_role"] = by_role
            measured_layout[f"c{c}"] = measured
    return measured_layout


def ray_cost(floor: dict[str, dict], c: int, images_per_s: float) -> float:
    """Ray's own CPU per image at a layout's rate, from its floor: the floor's CPU per
    request, with Ray's steady background (the floor's idle CPU per second: controller
    loop, raylet, GCS, agents) counted at the layout's images/s instead of the floor's
    requests/s (the floor answers ~60x as many, so its per-request figure hides it)."""
    idle = floor["idle"]["cpu_ms_per_s"]
    busy = floor[f"c{c}"]
    return float(
        busy["layout_cpu_ms"]
        - idle / max(busy.get("tput", 0.0), 1e-9)
        + idle / max(images_per_s, 1e-9)
    )


def against_plain(rounds: list[dict[str, dict[str, dict]]], name: str, key: str) -> dict:
    """A layout's images/s ratio and p50 gap to plain's of the same round: by round, and
    the median of each."""
    by_round = [
        {
            "tput_vs_plain": r[name][key]["tput"] / r["plain"][key]["tput"],
            "p50_minus_plain_ms": r[name][key]["p50_ms"] - r["plain"][key]["p50_ms"],
        }
        for r in rounds
    ]
    return {
        **{k: median(x[k] for x in by_round) for k in ("tput_vs_plain", "p50_minus_plain_ms")},
        "by_round": by_round,
    }


def median_round(layout_rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Per concurrency, the round with the median images/s (its figures kept together)."""
    chosen: dict[str, dict] = {}
    for key in layout_rounds[0]:
        ordered = sorted(layout_rounds, key=lambda r: r[key].get("tput", 0.0))
        chosen[key] = ordered[len(ordered) // 2][key]
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="yolov8n")
    p.add_argument("--photo", default="640x480")
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=1, help="alternate the layouts this often")
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--layouts", nargs="+", metavar="NAME",
        help="only these layouts (plain and their floors always run), e.g. 'ray colocated 1x all cores'",
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
    chosen = {
        k: v for k, v in LAYOUTS.items() if not args.layouts or k == "plain" or k in args.layouts
    }
    # Each round measures every layout once, in turn: a machine whose speed drifts (shared
    # hosts do, by 2x within an hour) shifts a round's layouts alike, so each layout is
    # compared with plain's figure of the same round, and the median round is reported.
    rounds: list[dict[str, dict[str, dict]]] = []
    for n in range(args.rounds):
        measured_round: dict[str, dict[str, dict]] = {}
        floors = {floor_of(name): FLOORS[floor_of(name)] for name in chosen if name != "plain"}
        for name, extra in {**chosen, **floors}.items():
            measured_round[name] = measure_layout(
                tmp, name, extra, path, body, args.concurrency, args.duration
            )
            print(f"round {n + 1}, {name}: " + ", ".join(
                f"c={c} {measured_round[name][f'c{c}'].get('tput', float('nan')):.1f} img/s "
                f"p50 {measured_round[name][f'c{c}'].get('p50_ms', float('nan')):.1f} ms"
                for c in args.concurrency
            ), file=sys.stderr)  # fmt: skip
        rounds.append(measured_round)
    results = {name: median_round([r[name] for r in rounds]) for name in rounds[0]}
    plain = results["plain"]
    own = {  # cvserve's CPU per image on the Ray path beyond plain cvserve's and Ray's own
        name: {
            f"c{c}": median(
                r[name][f"c{c}"]["layout_cpu_ms"]
                - r["plain"][f"c{c}"]["layout_cpu_ms"]
                - ray_cost(r[floor_of(name)], c, r[name][f"c{c}"].get("tput", 0.0))
                for r in rounds
            )
            for c in args.concurrency
        }
        for name in results
        if name.startswith("ray ") and name not in FLOORS
    }
    ratios = {
        name: {f"c{c}": against_plain(rounds, name, f"c{c}") for c in args.concurrency}
        for name in results
        if name != "plain" and name not in FLOORS
    }
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cores": cores()},
        "model": args.model,
        "photo": args.photo,
        "duration_s": args.duration,
        "results": results,
        "cvserve_own_ray_cpu_ms": own,
        "rounds": args.rounds,
        "ratios": ratios,
        "by_round": rounds,
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
            ratio = (  # a floor's (and plain's own) is its median round's
                ratios[name][f"c{c}"]["tput_vs_plain"]
                if name in ratios
                else m["tput"] / plain[f"c{c}"]["tput"]
            )
            cells += [f"{m['tput']:.1f}", f"{m['p50_ms']:.1f}", f"{ratio:.2f}"]
            cells.append(f"{m['layout_cpu_ms']:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, r in results.items():
        roles = r[f"c{args.concurrency[-1]}"]["cpu_ms_by_role"]
        print(f"CPU ms/img by process at c={args.concurrency[-1]}, {name}: " + ", ".join(
            f"{role} {ms:.1f}" for role, ms in sorted(roles.items())
        ))  # fmt: skip
    for name, per_c in ratios.items():
        print(f"{name}, p50 - plain's p50 by round: " + "; ".join(
            f"c={c[1:]} " + ", ".join(f"{x['p50_minus_plain_ms']:+.1f}" for x in v["by_round"])
            for c, v in per_c.items()
        ) + " ms")  # fmt: skip
    for name, r in results.items():
        idle = r["idle"]
        print(f"idle CPU ms/s, {name}: {idle['cpu_ms_per_s']:.0f} (" + ", ".join(
            f"{role} {ms:.0f}" for role, ms in sorted(idle["by_role"].items())
        ) + ")")  # fmt: skip
    for name, per_c in own.items():
        print(f"cvserve's own CPU on the Ray path, {name}: " + ", ".join(
            f"c={c} {ms:.1f} ms/img" for c, ms in per_c.items()
        ))  # fmt: skip
    print(f"\nreport: {out}")


if __name__ == "__main__":
    main()
