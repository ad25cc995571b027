"""OpenVINO sessions with ONNX Runtime's interface, compiled straight from the ONNX file.

Imported only when a model runs on OpenVINO (the `openvino` extra): the plain install never
needs it. An `InferRequest` is not thread-safe, so a session keeps a free list of them and
each concurrent run borrows its own (one per lane in the default layout).

Cancellation: a run starts asynchronously and waits in short slices, watching the same
`terminate` flag of the ONNX Runtime `RunOptions` the engine sets on a deadline; once set,
`InferRequest.cancel()` stops the run between graph nodes and the run raises, as ONNX
Runtime's does.
"""

from __future__ import annotations

import importlib.util
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cvserve.errors import ModelLoadError
from cvserve.models.backends.base import Backend, ModelMeta, NodeInfo, Precision, Session

# How often a waiting run looks at its terminate flag (ms): the cancellation latency.
POLL_MS = 10

_TYPES = {
    "f32": "tensor(float)",
    "f16": "tensor(float16)",
    "u8": "tensor(uint8)",
    "i8": "tensor(int8)",
    "i32": "tensor(int32)",
    "i64": "tensor(int64)",
    "f64": "tensor(double)",
    "boolean": "tensor(bool)",
}

_core_lock = threading.Lock()
_core: list[Any] = []


class RunCancelled(RuntimeError):
    """A run stopped because its RunOptions' terminate flag was set (ONNX Runtime raises its
    own error type for the same)."""


def openvino() -> Any:
    """The `openvino` module, imported with its telemetry declined. Its import sends a usage
    event to Google Analytics unless the user opted out (and writes a client id under
    ~/intel); the sender forks from a threaded server, and the fork hangs on a lock it
    inherited and outlives the server. cvserve sends nothing anywhere: every consent check
    of this process answers "declined", as an opted-out user's would."""
    try:
        from openvino_telemetry.utils.opt_in_checker import (  # type: ignore[import-untyped]
            ConsentCheckResult,
            OptInChecker,
        )
    except ImportError:  # an OpenVINO without its telemetry package
        pass
    else:

        def declined(self: Any, *args: Any, **kwargs: Any) -> Any:
            return ConsentCheckResult.DECLINED

        OptInChecker.check = declined
    import openvino as ov

    return ov


def core() -> Any:
    """The process's one `openvino.Core` (it owns the plugin and its thread pools)."""
    with _core_lock:
        if not _core:
            _core.append(openvino().Core())
        return _core[0]


def version() -> str:
    return str(openvino().__version__)


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _name(port: Any, onnx_names: set[str]) -> str:
    """The port's name in the ONNX file. Compiling can give a port more names (the tensors
    an eliminated no-op Reshape or Cast produced: MobileSAM's decoder input
    `image_embeddings` also answers to `/Reshape_3_output_0`), and `get_any_name()` may
    return such an internal one; the families look inputs and outputs up by ONNX name."""
    names = sorted(n for n in port.get_names() if n in onnx_names)
    return names[0] if names else str(port.get_any_name())


def _node(port: Any, onnx_names: set[str]) -> NodeInfo:
    shape: list[Any] = []
    for i, d in enumerate(port.get_partial_shape()):
        shape.append(d.get_length() if d.is_static else f"dim_{i}")
    return NodeInfo(
        _name(port, onnx_names),
        shape,
        _TYPES.get(port.get_element_type().get_type_name(), "tensor(float)"),
    )


def _metadata(model: Any) -> dict[str, str]:
    """The ONNX file's metadata_props (what ONNX Runtime's custom_metadata_map shows)."""
    try:
        if not model.has_rt_info(["framework"]):
            return {}
        return {
            str(k): str(v.astype(str))
            for k, v in model.get_rt_info(["framework"]).astype(dict).items()
        }
    except Exception:  # an rt_info layout this version does not have: no metadata
        return {}


class OpenVinoSession:
    """One compiled model and its infer requests: `runs` streams of `threads` inference
    threads each. A stream runs one request at a time, so lanes sharing the session need a
    stream each (with one, two lanes ran one after the other: YOLOv8n at c=4 9.6 images/s
    against ONNX Runtime's 17.6 on 2 cores); the streams share the compiled weights."""

    def __init__(
        self, path: Path, threads: int, precision: Precision = "f32", runs: int = 1
    ) -> None:
        runs = max(1, runs)
        config = {
            "INFERENCE_NUM_THREADS": max(1, threads) * runs,
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY" if runs == 1 else "THROUGHPUT",
            "NUM_STREAMS": runs,
            # Lanes, the HTTP loop and pixel work share the cores: no thread pinned to one.
            "ENABLE_CPU_PINNING": False,
        }
        try:
            model = core().read_model(str(path))
            self._compiled = core().compile_model(model, "CPU", config)
        except Exception as e:  # unsupported operators, a bad file: several error types
            raise ModelLoadError(f"OpenVINO cannot compile {path.name}: {e}") from e
        self.path = path
        self.threads = threads
        self.precision = precision
        # The graph's own input and output names, as read (before compiling adds aliases).
        onnx_names = {n for port in (*model.inputs, *model.outputs) for n in port.get_names()}
        self._inputs = [_node(p, onnx_names) for p in self._compiled.inputs]
        self._outputs = [_node(p, onnx_names) for p in self._compiled.outputs]
        self._meta = ModelMeta(_metadata(model))
        # Every name of each output port (ONNX names, possibly aliases) -> its index.
        self._output_index: dict[str, int] = {}
        for i, port in enumerate(self._compiled.outputs):
            for name in port.get_names():
                self._output_index.setdefault(name, i)
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._free.put(self._compiled.create_infer_request())

    def get_inputs(self) -> list[NodeInfo]:
        return self._inputs

    def get_outputs(self) -> list[NodeInfo]:
        return self._outputs

    def get_modelmeta(self) -> ModelMeta:
        return self._meta

    def _borrow(self) -> Any:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return self._compiled.create_infer_request()

    def run(
        self, output_names: list[str] | None, feeds: dict[str, np.ndarray], run_options: Any = None
    ) -> list[np.ndarray]:
        if run_options is not None and run_options.terminate:
            raise RunCancelled("run stopped before it started (terminate flag set)")
        request = self._borrow()
        try:
            request.start_async({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            cancelled = False
            while not request.wait_for(POLL_MS):
                if not cancelled and run_options is not None and run_options.terminate:
                    request.cancel()
                    cancelled = True
            if cancelled:
                raise RunCancelled("run stopped (terminate flag set)")
            # Copies: the request's output tensors are overwritten by its next run.
            results = [
                np.array(request.get_output_tensor(i).data) for i in range(len(self._outputs))
            ]
        except RunCancelled:
            raise
        except RuntimeError as e:
            if run_options is not None and run_options.terminate:
                raise RunCancelled("run stopped (terminate flag set)") from e
            raise
        finally:
            self._free.put(request)
        if output_names is None:
            return results
        return [results[self._output_index[name]] for name in output_names]


def _open(path: Path, threads: int, spin: bool, runs: int, precision: str) -> Session:
    # Threads wait in OpenVINO's own pool: there is no spinning to ask for.
    return OpenVinoSession(path, threads, precision, runs)  # type: ignore[arg-type]


BACKEND = Backend("openvino", _open, version, available, extra="openvino")
