"""Loading a model keeps numpy's BLAS to one thread: OpenBLAS's own threads spin after a
product and took the cores ONNX Runtime's next run needed (seg request 64 -> 109 ms)."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from cvserve.models.runtime import RuntimeOptions, SessionPool
from tests.synthetic import constant_model


def test_session_pool_limits_blas_to_one_thread(tmp_path):
    path = constant_model(tmp_path / "m.onnx", [np.zeros((1, 2), np.float32)])
    SessionPool(path, RuntimeOptions(lanes=1, threads_per_lane=1))
    blas = [info for info in threadpool_info() if info["user_api"] == "blas"]
    assert blas, "numpy's BLAS was not found"
    assert all(info["num_threads"] == 1 for info in blas), blas
