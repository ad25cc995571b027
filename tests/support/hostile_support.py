"""Helpers for the hostile-input, robustness and load tests: a small synthetic store, a
deliberately slow ONNX model, hand-crafted image files, and a live `cvserve serve`
subprocess on 127.0.0.1 whose resident memory can be read from /proc."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cvserve.models.manifest import Manifest, Preprocess
from tests.support.synthetic import constant_model, yolo_head

DET_ID = "det/1"
CLS_ID = "cls/1"
SLOW_ID = "slow/1"
SIDE = 64  # the synthetic models' input side: small, so inference is cheap


# -- models ------------------------------------------------------------------------------
def _write(folder: Path, manifest: Manifest) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    manifest.write(folder)


def add_detector(root: Path, model_id: str = DET_ID) -> None:
    """A YOLO-v8-shaped detector (classes a, b) that always finds one box at the centre."""
    folder = root / model_id
    folder.mkdir(parents=True, exist_ok=True)
    head = yolo_head([(32, 32, 16, 16), (10, 10, 8, 8)], [[0.9, 0.1], [0.2, 0.6]], candidates=32)
    constant_model(folder / "model.onnx", [head], input_shape=(1, 3, SIDE, SIDE))
    _write(
        folder,
        Manifest(
            task="object-detection",
            family="yolo",
            class_names=["a", "b"],
            preprocess=Preprocess(resize="letterbox", size=(SIDE, SIDE)),
            postprocess={"format": "v8"},
        ),
    )


def add_classifier(root: Path, model_id: str = CLS_ID) -> None:
    folder = root / model_id
    folder.mkdir(parents=True, exist_ok=True)
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    constant_model(folder / "model.onnx", [probs], input_shape=(1, 3, SIDE, SIDE))
    _write(
        folder,
        Manifest(
            task="classification",
            family="classifier",
            class_names=["cat", "dog", "bird"],
            preprocess=Preprocess(resize="center-crop", size=(SIDE, SIDE)),
        ),
    )


def slow_graph(path: Path, iterations: int, dim: int = 256) -> Path:
    """A detector whose graph loops `iterations` times over a dim x dim MatMul + Tanh before
    answering like `add_detector`'s model: runtime scales linearly with `iterations`."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_in", "w"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["x_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [dim, dim]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [dim, dim]),
        ],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    head = yolo_head([(32, 32, 16, 16)], [[0.9, 0.1]], candidates=32)
    nodes = [
        helper.make_node("Cast", ["images"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["x_f"], ["x_sum"], keepdims=0),
        helper.make_node("Mul", ["x_sum", "zero_c"], ["zero"]),
        helper.make_node("Add", ["x0", "zero"], ["x_start"]),
        # Loop(M, cond, x_start) -> x_final: `iterations` rounds of x = tanh(x @ w).
        helper.make_node("Loop", ["trips", "cond", "x_start"], ["x_final"], body=body),
        helper.make_node("ReduceSum", ["x_final"], ["loop_sum"], keepdims=0),
        helper.make_node("Mul", ["loop_sum", "zero_c"], ["zero2"]),
        helper.make_node("Add", ["head", "zero2"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(np.zeros((), np.float32), "zero_c"),
        numpy_helper.from_array(np.eye(dim, dtype=np.float32), "x0"),
        numpy_helper.from_array(np.array(iterations, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "cond"),
        numpy_helper.from_array(head, "head"),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(head.shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


_CALIBRATION: dict[int, float] = {}


def seconds_per_iteration(dim: int = 256) -> float:
    """Measured cost of one loop iteration on this machine (one ORT thread)."""
    if dim not in _CALIBRATION:
        import tempfile

        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = slow_graph(Path(tmp) / "cal.onnx", 200, dim)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"images": np.zeros((1, 3, SIDE, SIDE), np.float32)}
            sess.run(None, feed)
            t0 = time.perf_counter()
            sess.run(None, feed)
            _CALIBRATION[dim] = (time.perf_counter() - t0) / 200
    return _CALIBRATION[dim]


def add_slow_detector(root: Path, seconds: float, model_id: str = SLOW_ID) -> None:
    """A detector that takes about `seconds` per inference (calibrated on this machine)."""
    folder = root / model_id
    folder.mkdir(parents=True, exist_ok=True)
    iterations = max(1, int(seconds / seconds_per_iteration()))
    slow_graph(folder / "model.onnx", iterations)
    _write(
        folder,
        Manifest(
            task="object-detection",
            family="yolo",
            class_names=["a", "b"],
            preprocess=Preprocess(resize="letterbox", size=(SIDE, SIDE)),
            postprocess={"format": "v8"},
        ),
    )


# -- images ------------------------------------------------------------------------------
def encode(fmt: str, width: int = 48, height: int = 32, mode: str = "RGB", **save: object) -> bytes:
    rng = np.random.default_rng(width * 7919 + height)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}.get(mode, 3)
    arr = (rng.random((height, width, channels)) * 255).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=None)
    if img.mode != mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A ~100-byte PNG whose header declares width x height RGB pixels (7.5 GB decoded), with
    a tiny IDAT: only a decoder that allocates before checking the header would suffer."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_with_corrupt_exif() -> bytes:
    """A valid JPEG carrying an APP1 Exif segment whose IFD points far outside itself."""
    jpeg = encode("JPEG", 40, 30)
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2)
    tiff += struct.pack(">HHII", 0x0112, 3, 1, 0x00060000)  # orientation 6 (well formed)
    tiff += struct.pack(">HHII", 0x8769, 4, 1, 0x7FFFFFF0)  # Exif IFD offset: out of range
    tiff += struct.pack(">I", 0xFFFFFF00)  # next IFD: out of range
    payload = b"Exif\x00\x00" + tiff + b"\xde\xad\xbe\xef" * 3
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def jpeg_with_garbage_exif() -> bytes:
    """APP1 Exif segment that is pure garbage after the marker."""
    jpeg = encode("JPEG", 40, 30)
    payload = b"Exif\x00\x00" + bytes(range(256)) * 2
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


# -- a live server -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """Resident memory of a process (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class LiveServer:
    """`python -m cvserve.cli serve --no-pull` on 127.0.0.1:<free port>, stopped on exit.

    Settings not exposed as flags travel as CVSERVE_* environment variables.
    """

    def __init__(
        self,
        models_dir: Path,
        log_path: Path,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CVSERVE_")}
        environ.update(
            {
                "CVSERVE_DATA_DIR": str(models_dir.parent / "data"),
                "CVSERVE_WORKERS": "1",
                "CVSERVE_INTRA_OP_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        environ.update(env or {})
        cmd = [
            sys.executable,
            "-m",
            "cvserve.cli",
            "serve",
            "--no-pull",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--models-dir",
            str(models_dir),
            *args,
        ]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=environ)
        self._wait_ready(start_timeout_s)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
