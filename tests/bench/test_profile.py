"""The ONNX Runtime profile summary: node times are attributed to the model run that contains them, by phase, and
summed per operator (checked on a hand-made profile and on a real ORT session's file)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_vlm.bench.profile import decoder_phases, ort_profiling, summarize_profile


def _node(ts, dur, op):
    return {"cat": "Node", "name": f"n{ts}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_hand_made_profile(tmp_path):
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 10_000},     # prefill
        _node(100, 6_000, "MatMulNBits"), _node(6_200, 2_000, "GroupQueryAttention"),
        {"cat": "Session", "name": "model_run", "ts": 20_000, "dur": 1_000},  # decode 1
        _node(20_100, 600, "MatMulNBits"), _node(20_700, 200, "GroupQueryAttention"),
        {"cat": "Session", "name": "model_run", "ts": 30_000, "dur": 1_400},  # decode 2
        _node(30_100, 1_000, "MatMulNBits"), _node(31_200, 200, "GroupQueryAttention"),
        _node(50_000, 99_000, "Outside"),  # after every run: belongs to none
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    summary = summarize_profile(path, decoder_phases(1, 2))
    assert summary["prefill"]["calls"] == 1 and summary["prefill"]["ms_per_call"] == pytest.approx(10.0)
    decode = summary["decode"]
    assert decode["calls"] == 2 and decode["ms_per_call"] == pytest.approx(1.2)
    assert decode["kernel_ms_per_call"] == pytest.approx(1.0)
    assert decode["by_op"]["MatMulNBits"]["ms_per_call"] == pytest.approx(0.8)
    assert decode["by_op"]["MatMulNBits"]["percent"] == pytest.approx(80.0)
    assert list(decode["by_op"]) == ["MatMulNBits", "GroupQueryAttention"]
    assert "Outside" not in summary["prefill"]["by_op"]


def test_real_onnxruntime_profile(tmp_path):
    """A session made through the runtime's own options writes a profile that the summary reads."""
    onnx = pytest.importorskip("onnx")
    import onnxruntime
    from onnx import TensorProto, helper

    from edge_vlm.runtime import providers

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"], name="r")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, dtype=np.float32))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with ort_profiling(str(tmp_path / "prof")):
        session = onnxruntime.InferenceSession(str(path), providers.session_options(1),
                                               providers=["CPUExecutionProvider"])
    assert providers.session_options(1).enable_profiling is False  # restored afterwards
    for _ in range(3):
        session.run(None, {"x": np.ones((4, 64), dtype=np.float32)})
    summary = summarize_profile(session.end_profiling())
    assert summary["run"]["calls"] == 3
    assert set(summary["run"]["by_op"]) == {"MatMul", "Relu"}
