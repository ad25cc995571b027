"""Runtime backends: OpenVINO sessions answer like ONNX Runtime's (names, order, values),
`auto` takes OpenVINO only where it is exact and faster and measures once per file, a
deadline stops an OpenVINO run, and manifests and settings choose the runtime.

With CI=true a skip here fails (tests/support/strict_skips.py): OpenVINO is in the test extra.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino")

import onnx  # noqa: E402

from cvserve.errors import ModelLoadError  # noqa: E402
from cvserve.models.backends import choose  # noqa: E402
from cvserve.models.backends.openvino import OpenVinoSession, RunCancelled  # noqa: E402
from cvserve.models.context import RunContext  # noqa: E402
from cvserve.models.manifest import Manifest, Preprocess  # noqa: E402
from cvserve.models.runtime import RuntimeOptions, SessionPool, new_run_options  # noqa: E402
from cvserve.models.store import ModelStore  # noqa: E402
from cvserve.settings import Settings  # noqa: E402
from tests.support.synthetic import constant_model, ultralytics_meta, yolo_head  # noqa: E402


def conv_model(path: Path, side: int = 64, seed: int = 0) -> Path:
    """Conv -> Relu -> Conv, plus a global pool head: real arithmetic, three outputs whose
    order differs from their names' order."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.3
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["z_feat"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["z_feat"], ["a_pool"]),
        helper.make_node("Sigmoid", ["a_pool"], ["m_score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, side, side])],
        [
            helper.make_tensor_value_info("z_feat", TensorProto.FLOAT, [1, 4, side, side]),
            helper.make_tensor_value_info("a_pool", TensorProto.FLOAT, [1, 4, 1, 1]),
            helper.make_tensor_value_info("m_score", TensorProto.FLOAT, [1, 4, 1, 1]),
        ],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "task", "detect"
    onnx.save(model, str(path))
    return path


def chain_model(path: Path, nodes: int, dim: int = 256) -> Path:
    """`nodes` MatMul + Tanh pairs in a row: a slow model whose run can stop between nodes
    (OpenVINO cancels between nodes; a Loop node would run to its end)."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    graph_nodes = [helper.make_node("Reshape", ["images", "shape"], ["x0"])]
    for i in range(nodes):
        graph_nodes.append(helper.make_node("MatMul", [f"x{i}", "w"], [f"m{i}"]))
        graph_nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"x{i + 1}"]))
    graph_nodes.append(helper.make_node("Identity", [f"x{nodes}"], ["out"]))
    graph = helper.make_graph(
        graph_nodes,
        "chain",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, dim, dim])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [dim, dim])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array([dim, dim], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def pool(path: Path, runtime: str, precision: str = "f32") -> SessionPool:
    return SessionPool(path, RuntimeOptions(1, 1, runtime=runtime, precision=precision))


def test_lanes_sharing_an_openvino_session_get_a_stream_each(tmp_path):
    """A stream runs one request at a time: two single-threaded lanes on a one-stream
    compiled model ran one after the other (YOLOv8n at c=4: 9.6 images/s against 17.6)."""
    path = conv_model(tmp_path / "conv.onnx")
    shared = SessionPool(path, RuntimeOptions(2, 1, wide_threads=2, runtime="openvino"))
    assert len(shared._sessions) == 1
    compiled = shared._sessions[0]._compiled  # type: ignore[attr-defined]
    assert int(compiled.get_property("NUM_STREAMS")) == 2
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 2
    wide = shared._wide._compiled  # type: ignore[union-attr]
    assert int(wide.get_property("NUM_STREAMS")) == 1
    assert int(wide.get_property("INFERENCE_NUM_THREADS")) == 2
    each = SessionPool(path, RuntimeOptions(2, 2, runtime="openvino"))  # a session per lane
    assert [int(s._compiled.get_property("NUM_STREAMS")) for s in each._sessions] == [1, 1]


def test_openvino_answers_like_onnxruntime(tmp_path):
    path = conv_model(tmp_path / "conv.onnx")
    ort_pool, ov_pool = pool(path, "onnxruntime"), pool(path, "openvino")
    assert ov_pool.choice.runtime == "openvino"
    assert isinstance(ov_pool._sessions[0], OpenVinoSession)
    assert ov_pool.input_names == ort_pool.input_names == ["images"]
    assert ov_pool.output_names == ort_pool.output_names == ["z_feat", "a_pool", "m_score"]
    assert [o.shape for o in ov_pool.outputs] == [o.shape for o in ort_pool.outputs]
    assert [i.type for i in ov_pool.inputs] == [i.type for i in ort_pool.inputs]
    assert ov_pool.input_dtype(0) is np.float32
    assert ov_pool.metadata == ort_pool.metadata == {"task": "detect"}
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    expected = ort_pool.run({"images": x})
    got = ov_pool.run({"images": x})
    assert choose.agreement(expected, got)["equal"]
    # Outputs asked for by name, in the asked order (ONNX Runtime's run(output_names, ...)).
    with ov_pool.session() as s:
        named = s.run(["m_score", "z_feat"], {"images": x})
    np.testing.assert_array_equal(named[0], got[2])
    np.testing.assert_array_equal(named[1], got[0])
    # Results are copies: the next run does not overwrite them.
    before = got[0].copy()
    ov_pool.run({"images": x * 0})
    np.testing.assert_array_equal(got[0], before)


def test_ports_keep_their_onnx_names_when_compiling_aliases_them(tmp_path):
    """An input feeding a no-op Reshape and Cast: compiling folds them into the parameter,
    whose port then also answers to their tensors' names (MobileSAM's decoder input
    `image_embeddings` to `/Reshape_3_output_0`); the session reports the ONNX names, so
    the families find their inputs (the SAM decoder failed to load on OpenVINO before)."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["/Reshape_output_0"]),
        helper.make_node("Cast", ["/Reshape_output_0"], ["/Cast_output_0"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["/Cast_output_0", "one"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "alias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[
            numpy_helper.from_array(np.array([1, 4], np.int64), "shape"),
            numpy_helper.from_array(np.ones((1, 4), np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "alias.onnx"
    onnx.save(model, str(path))
    session = OpenVinoSession(path, 1)
    assert "x" in session._compiled.inputs[0].get_names()  # the case: more names than one
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["y"]
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x + 1)
    np.testing.assert_array_equal(session.run(["y"], {"x": x})[0], x + 1)


def test_constant_models_are_equal_bit_for_bit(tmp_path):
    """The synthetic models the geometry tests use: both runtimes give the same bits,
    uint8 inputs included."""
    head = yolo_head([(320, 320, 100, 80)], [[0.9, 0.1]])
    for dtype in (TensorProto.FLOAT, TensorProto.UINT8):
        path = constant_model(
            tmp_path / f"m{dtype}.onnx",
            [head, np.arange(6, dtype=np.float32).reshape(2, 3)],
            metadata=ultralytics_meta("detect", ["a", "b"]),
            input_dtype=dtype,
        )
        ort_pool, ov_pool = pool(path, "onnxruntime"), pool(path, "openvino")
        assert ov_pool.input_dtype(0) is ort_pool.input_dtype(0)
        x = np.full((1, 3, 640, 640), 7, ort_pool.input_dtype(0))
        for a, b in zip(ort_pool.run({"images": x}), ov_pool.run({"images": x}), strict=True):
            np.testing.assert_array_equal(a, b)
        assert ov_pool.metadata["names"] == ort_pool.metadata["names"]


def test_lanes_share_an_openvino_session_safely(tmp_path):
    """One session, runs from several threads at once: each borrows its own request."""
    path = conv_model(tmp_path / "conv.onnx")
    session = OpenVinoSession(path, 1)
    reference = pool(path, "onnxruntime")
    inputs = [np.random.default_rng(i).random((1, 3, 64, 64), dtype=np.float32) for i in range(6)]
    results: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        results[i] = session.run(None, {"images": inputs[i]})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        assert choose.agreement(reference.run({"images": inputs[i]}), results[i])["equal"]


def test_auto_measures_once_and_caches_beside_the_file(tmp_path, monkeypatch):
    path = conv_model(tmp_path / "conv.onnx")
    first = pool(path, "auto")
    cache = json.loads((tmp_path / choose.CACHE_NAME).read_text())
    entry = cache["conv.onnx"]
    assert entry["runtime"] == first.choice.runtime in ("onnxruntime", "openvino")
    assert entry["agreement"]["equal"] is True
    assert set(entry["ms"]) == {"onnxruntime", "openvino"}
    assert choose.file_sha256(path) in entry["key"]

    def no_measure(*args: object) -> dict:
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(choose, "measure", no_measure)
    assert pool(path, "auto").choice.runtime == first.choice.runtime
    # The cached choice is what a load follows: OpenVINO where it was decided so.
    entry["runtime"] = "openvino"
    (tmp_path / choose.CACHE_NAME).write_text(json.dumps({"conv.onnx": entry}))
    assert isinstance(pool(path, "auto")._sessions[0], OpenVinoSession)
    # Another file (another hash) is measured afresh.
    conv_model(path, seed=5)
    monkeypatch.undo()
    pool(path, "auto")
    assert (
        json.loads((tmp_path / choose.CACHE_NAME).read_text())["conv.onnx"]["key"] != entry["key"]
    )


def test_auto_keeps_onnxruntime_where_openvino_is_not_exact(tmp_path, monkeypatch):
    path = conv_model(tmp_path / "conv.onnx")
    real_run = OpenVinoSession.run

    def off_by_1e4(self, names, feeds, run_options=None):  # type: ignore[no-untyped-def]
        return [o * (1 + 1e-4) + 1e-3 for o in real_run(self, names, feeds, run_options)]

    monkeypatch.setattr(OpenVinoSession, "run", off_by_1e4)
    chosen = pool(path, "auto").choice
    assert chosen.runtime == "onnxruntime"
    assert "differs" in chosen.reason
    assert chosen.measured["agreement"]["equal"] is False


def test_auto_keeps_onnxruntime_where_openvino_is_slower(tmp_path, monkeypatch):
    path = conv_model(tmp_path / "conv.onnx")
    real_run = OpenVinoSession.run

    def slow(self, names, feeds, run_options=None):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        return real_run(self, names, feeds, run_options)

    monkeypatch.setattr(OpenVinoSession, "run", slow)
    chosen = pool(path, "auto").choice
    assert chosen.runtime == "onnxruntime" and "both exact" in chosen.reason


def test_auto_keeps_onnxruntime_for_graphs_with_nms(tmp_path, monkeypatch):
    """Non-maximum suppression (or control flow) decides boxes the noise check input never
    reaches: coco-detect's Loop agreed on it, then gave other classes on real photos."""
    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k"], ["selected"])]
    graph = helper.make_graph(
        nodes,
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 8, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 8]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        initializer=[numpy_helper.from_array(np.array([4], np.int64), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "nms.onnx"
    onnx.save(model, str(path))
    assert choose.unchecked_ops(path) == ["NonMaxSuppression"]
    monkeypatch.setattr(choose, "best_ms", lambda *a: {"onnxruntime": 9.0, "openvino": 1.0})
    decided = choose.measure(path, 1)
    assert decided["runtime"] == "onnxruntime"
    assert "NonMaxSuppression" in decided["reason"]
    assert choose.unchecked_ops(conv_model(tmp_path / "conv.onnx")) == []


def test_agreement_holds_values_near_zero_to_the_output_scale():
    ref = [np.array([5.0, 1e-5, -2.0], np.float32)]
    assert choose.agreement(ref, [ref[0] + np.float32(2e-6) * np.array([1, 1, 0])])["equal"]
    assert not choose.agreement(ref, [ref[0] * np.float32(1 + 1e-4)])["equal"]
    assert not choose.agreement(ref, [ref[0][:2]])["equal"]


def test_a_deadline_stops_an_openvino_run(tmp_path):
    path = chain_model(tmp_path / "chain.onnx", 3000)
    slow = pool(path, "openvino")
    x = {"images": np.eye(256, dtype=np.float32)[None]}
    t0 = time.perf_counter()
    slow.run(x)
    full = time.perf_counter() - t0
    assert full > 0.3, f"the chain model is too fast here ({full:.2f} s) to test stopping it"
    options = new_run_options()
    timer = threading.Timer(full / 10, lambda: setattr(options, "terminate", True))
    t0 = time.perf_counter()
    timer.start()
    with pytest.raises(RunCancelled):
        slow.run(x, RunContext(options))
    stopped = time.perf_counter() - t0
    assert stopped < full / 2, (stopped, full)
    # Set before the run: it never starts. The session runs again afterwards.
    with pytest.raises(RunCancelled):
        slow.run(x, RunContext(options))
    assert slow.run(x)[0].shape == (256, 256)


def _folder(root: Path, **manifest: object) -> Path:
    folder = root / "det" / "1"
    folder.mkdir(parents=True)
    conv_model(folder / "model.onnx")
    Manifest(
        task="classification",
        family="classifier",
        class_names=["a", "b", "c", "d"],
        preprocess=Preprocess(resize="stretch", size=(64, 64)),
        **manifest,  # type: ignore[arg-type]
    ).write(folder)
    return folder


def test_manifest_chooses_the_runtime_and_precision(tmp_path):
    folder = _folder(tmp_path, runtime="openvino", runtime_precision="bf16")
    raw = json.loads((folder / "cvserve.json").read_text())
    assert raw["runtime"] == "openvino" and raw["runtime_precision"] == "bf16"
    model = ModelStore(tmp_path, RuntimeOptions(1, 1)).get("det/1")
    chosen = model.pool.choice  # type: ignore[attr-defined]
    assert (chosen.runtime, chosen.precision) == ("openvino", "bf16")


def test_an_unset_manifest_runtime_follows_the_options(tmp_path):
    folder = _folder(tmp_path)
    assert "runtime" not in json.loads((folder / "cvserve.json").read_text())
    model = ModelStore(tmp_path, RuntimeOptions(1, 1)).get("det/1")
    assert model.pool.choice.runtime == "onnxruntime"  # type: ignore[attr-defined]


def test_settings_carry_the_runtime(monkeypatch):
    assert Settings().runtime_options().runtime == Settings.default("runtime")
    settings = Settings.from_env(
        {"CVSERVE_RUNTIME": "openvino", "CVSERVE_RUNTIME_PRECISION": "bf16"}
    )
    options = settings.runtime_options(lanes=2, threads_per_lane=1, wide_threads=0)
    assert (options.runtime, options.precision, options.lanes) == ("openvino", "bf16", 2)
    with pytest.raises(ValueError):
        Settings(runtime="tensorrt")  # type: ignore[arg-type]


def test_unknown_runtime_is_a_load_error(tmp_path):
    path = conv_model(tmp_path / "conv.onnx")
    with pytest.raises(ModelLoadError):
        pool(path, "tensorrt")


_TELEMETRY_PROBE = """
import json, multiprocessing, threading, time
{importer}
import openvino_telemetry
time.sleep(1.0)  # the sender runs on a thread pool: give it time to fork
print(json.dumps({{"consent": openvino_telemetry.Telemetry().consent,
                  "children": len(multiprocessing.active_children())}}))
"""


@pytest.mark.parametrize("through_cvserve", [True, False], ids=["cvserve", "plain-import"])
def test_openvino_telemetry_is_declined_in_cvserve(tmp_path: Path, through_cvserve: bool) -> None:
    """OpenVINO's import sends a usage event unless the user opted out (forking a sender that
    hangs in a threaded server) and writes a client id under ~/intel; through cvserve it
    sends nothing and writes nothing. The plain import shows the hazard is real."""
    import os
    import subprocess
    import sys

    importer = (
        "from cvserve.models.backends.openvino import core; core()"
        if through_cvserve
        else "import openvino"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)
    probe = _TELEMETRY_PROBE.format(importer=importer)
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    if through_cvserve:
        assert seen == {"consent": False, "children": 0}
        assert not (tmp_path / "intel").exists()
    else:
        assert seen["consent"] is True and (tmp_path / "intel").exists()
