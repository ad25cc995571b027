"""Loading a model keeps numpy's BLAS and OpenCV to one thread: OpenBLAS's own threads spin
after a product and took the cores ONNX Runtime's next run needed (seg request 64 -> 109 ms);
OpenCV's pool split each resize over cores busy with the other lanes' runs."""

from __future__ import annotations

import cv2
import numpy as np
from threadpoolctl import threadpool_info

from cvserve.models.runtime import RuntimeOptions, SessionPool
from tests.support.synthetic import constant_model


def test_session_pool_limits_blas_to_one_thread(tmp_path):
    path = constant_model(tmp_path / "m.onnx", [np.zeros((1, 2), np.float32)])
    SessionPool(path, RuntimeOptions(lanes=1, threads_per_lane=1))
    blas = [info for info in threadpool_info() if info["user_api"] == "blas"]
    assert blas, "numpy's BLAS was not found"
    assert all(info["num_threads"] == 1 for info in blas), blas


def test_session_pool_limits_opencv_to_one_thread(tmp_path):
    path = constant_model(tmp_path / "m.onnx", [np.zeros((1, 2), np.float32)])
    cv2.setNumThreads(2)
    SessionPool(path, RuntimeOptions(lanes=1, threads_per_lane=1))
    assert cv2.getNumThreads() == 1


def test_alone_counts_requests_for_every_model():
    """The all-core session and split pixel work are for a request alone in the server:
    a request on another model counts, and a stray leave never drives the count negative."""
    from cvserve.engine import Admission

    gate = Admission(limit=4)
    gate.enter("a/1")
    assert gate.total == 1
    gate.enter("b/1")
    assert gate.total == 2  # not alone, though alone for its own model
    gate.leave("b/1", ran=True)
    gate.leave("a/1", ran=True)
    gate.leave("a/1")  # already gone
    assert gate.total == 0 and gate.in_flight == {"a/1": 0, "b/1": 0}
