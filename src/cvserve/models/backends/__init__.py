"""Runtime backends: ONNX Runtime and OpenVINO behind one session interface.

A backend turns an ONNX file into sessions with ONNX Runtime's calling convention
(`run(output_names, feeds, run_options=...)`, `get_inputs()`, `get_outputs()`,
`get_modelmeta()`), so `SessionPool` and the families never know which runtime runs.
Each backend is one record in `registry` (how it opens a session, its version, whether it
is installed). `session_maker` picks the runtime for one model file at load: `onnxruntime`, `openvino`,
or `auto` (the faster of the runtimes whose outputs equal ONNX Runtime's, measured once per
file and cached beside it, see `cvserve.models.backends.choose`).
"""

from __future__ import annotations

from cvserve.models.backends.base import (
    Precision,
    Runtime,
    Session,
    SessionMaker,
)
from cvserve.models.backends.choose import session_maker

__all__ = [
    "Precision",
    "Runtime",
    "Session",
    "SessionMaker",
    "session_maker",
]
