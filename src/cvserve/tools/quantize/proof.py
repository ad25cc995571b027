"""Proof that an int8 file loads and runs (in a process of its own), and its speed."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cvserve.tools.quantize.report import QuantizeRefused

LOAD_CHECK_TIMEOUT_S = 300.0  # loading and one run of the int8 file, in its own process


# Loads the file as the server does (cvserve's ONNX Runtime session options) and runs it.
_LOAD_CHECK = """\
import json, sys
from pathlib import Path
import numpy as np
from cvserve.models.backends.onnxruntime import make_session
names = json.loads(sys.argv[3])
with np.load(sys.argv[2]) as data:
    feeds = {name: data[f"arr_{i}"] for i, name in enumerate(names)}
make_session(Path(sys.argv[1]), 1).run(None, feeds)
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def prove_loads(
    path: Path, feeds: dict[str, np.ndarray], timeout: float = LOAD_CHECK_TIMEOUT_S
) -> None:
    """Load `path` and run it once on `feeds` in a process of its own; QuantizeRefused
    (with the exit status or signal and ONNX Runtime's last words) unless that worked."""
    import cvserve

    package_root = str(Path(cvserve.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="cvserve-quantize-") as tmp:
        feed_file = Path(tmp) / "feeds.npz"
        np.savez(feed_file, *feeds.values())
        names = json.dumps(list(feeds))
        cmd = [sys.executable, "-c", _LOAD_CHECK, str(path), str(feed_file), names]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise QuantizeRefused(
                f"the int8 model did not load and run within {timeout:.0f} s in a separate process"
            ) from e
    if proc.returncode == 0:
        return
    lines = [_ANSI.sub("", ln).strip() for ln in proc.stderr.splitlines()]
    last = next((ln for ln in reversed(lines) if ln), "no message")[:300]
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = "unknown"
        how = f"ONNX Runtime killed the process (signal {-proc.returncode}, {name})"
    else:
        how = f"the process failed (exit status {proc.returncode})"
    raise QuantizeRefused(
        f"the int8 model does not load and run: loaded in a separate process, {how}: {last}"
    )


def speed(
    float_path: Path, int8_path: Path, input_name: str, tensor: np.ndarray, repeats: int
) -> tuple[float, float]:
    """Median single-thread run times, float and int8 interleaved (fair on a busy machine)."""
    from cvserve.models.backends.onnxruntime import make_session

    sessions = [make_session(float_path, 1), make_session(int8_path, 1)]
    feed = {input_name: tensor}
    times: list[list[float]] = [[], []]
    for s in sessions:
        s.run(None, feed)
    for _ in range(max(1, repeats)):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feed)
            times[i].append(time.perf_counter() - t0)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3
