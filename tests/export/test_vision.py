"""vision.onnx against the PyTorch model's own image_features, at batch 1 and 3, fp32 and fp16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_vlm.export.vision import check_vision_graph, export_vision


@pytest.fixture(scope="module")
def model(exportable_tiny):
    from edge_vlm.model.checkpoint import load_checkpoint

    return load_checkpoint(exportable_tiny, dtype=torch.float32)[0]


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-5), ("fp16", 3e-2)])
def test_vision_onnx_matches_pytorch_at_batch_1_and_3(model, tmp_path, precision, tolerance):
    import onnxruntime

    path = tmp_path / "vision.onnx"
    info = export_vision(model, path, precision)
    assert isinstance(info["inputs"]["pixel_values"][0], str)  # the batch stayed symbolic
    assert info["outputs"]["image_features"][1:] == [16, 160]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, 56, 56, generator=generator)
        with torch.no_grad():
            expected = model.image_features(pixels).numpy()
        got = session.run(None, {"pixel_values": pixels.numpy()})[0]
        assert got.shape == expected.shape == (batch, 16, 160)
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= tolerance * scale


def test_fixed_batch_graph_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edge_vlm.errors import EdgeVLMError

    node = helper.make_node("Identity", ["pixel_values"], ["image_features"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), tmp_path / "fixed.onnx")
    with pytest.raises(EdgeVLMError, match="fixed batch"):
        check_vision_graph(tmp_path / "fixed.onnx")
