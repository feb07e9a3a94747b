"""The decoder step: the Phi directory carries the checkpoint's decoder exactly, the builder's graph carries the
lm_head bias, and shapes ONNX Runtime's attention cannot run are refused up front."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from edge_vlm.errors import EdgeVLMError
from edge_vlm.export import decoder as dec


@pytest.fixture(scope="module")
def model(exportable_tiny):
    from edge_vlm.model.checkpoint import load_checkpoint

    return load_checkpoint(exportable_tiny, dtype=torch.float32)[0]


def test_phi_dir_reproduces_the_text_logits(model, exportable_tiny, tmp_path):
    """PhiForCausalLM loaded by transformers from the written dir gives the LLaVA model's text-only logits."""
    from transformers import PhiForCausalLM

    dec.write_phi_dir(model, exportable_tiny, tmp_path / "phi")
    phi = PhiForCausalLM.from_pretrained(tmp_path / "phi").eval()
    ids = torch.tensor([[3, 50, 7, 99, 12, 0, 5]])
    with torch.no_grad():
        np.testing.assert_allclose(phi(input_ids=ids).logits.numpy(), model(input_ids=ids).logits.numpy(), atol=1e-5)
    assert torch.equal(phi.lm_head.bias, model.lm_head.bias) and model.lm_head.bias.abs().sum() > 0
    assert phi.config.rope_parameters["partial_rotary_factor"] == pytest.approx(0.4)
    # The builder reads the factor as a top-level attribute; transformers 5.17 sets that attribute to PhiConfig's
    # back-compat default 0.5 unless config.json names it, so the file itself must carry it.
    written = json.loads((tmp_path / "phi" / "config.json").read_text())
    assert written["partial_rotary_factor"] == pytest.approx(0.4) and written["rope_theta"] == pytest.approx(10000.0)


def test_builder_graph_carries_the_lm_head_bias(fp32_bundle, model, tmp_path):
    path = fp32_bundle / "decoder" / "model.onnx"
    bias = model.lm_head.bias.detach().numpy()
    dec.check_lm_head_bias(path, bias)  # passes on the real graph
    with pytest.raises(EdgeVLMError, match="differs from the checkpoint"):
        dec.check_lm_head_bias(path, bias + 0.01)
    # a graph without the Add (what a builder that dropped the bias would write) is refused
    copy = tmp_path / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False)
    add = next(n for n in graph.graph.node if n.name == dec.LM_HEAD_ADD)
    for node in graph.graph.node:  # rewire the logits to the MatMul's output
        node.output[:] = [add.input[0] if o == add.output[0] else o for o in node.output]
    graph.graph.node.remove(add)
    onnx.save(graph, str(copy))
    shutil.copy(path.with_name("model.onnx.data"), tmp_path / "model.onnx.data")
    with pytest.raises(EdgeVLMError, match="dropped the lm_head bias"):
        dec.check_lm_head_bias(copy, bias)


def test_attention_shapes_are_checked():
    """Head size 40 (160 / 4 heads) cannot run ONNX Runtime's GroupQueryAttention; Phi-2's shape (80, rotary 32) can,
    and so can the tiny preset (2 heads of 80)."""
    from edge_vlm.model.modeling import make_config

    dec.check_builder_compatible(make_config("llava-phi-2").text_config)
    dec.check_builder_compatible(make_config("tiny", image_token_id=1, vocab_size=600).text_config)
    four_heads = make_config("tiny", image_token_id=1, vocab_size=600, num_attention_heads=4,
                             num_key_value_heads=4).text_config
    with pytest.raises(EdgeVLMError, match="head size 40 is not a multiple of 16"):
        dec.check_builder_compatible(four_heads)
    half_rotary = make_config("tiny", image_token_id=1, vocab_size=600, partial_rotary_factor=0.3).text_config
    with pytest.raises(EdgeVLMError, match="rotary dim 24"):
        dec.check_builder_compatible(half_rotary)
    shape = dec.decoder_shape(make_config("llava-phi-2").text_config)
    assert (shape["head_size"], shape["rotary_dim"], shape["num_kv_heads"]) == (80, 32, 32)


def test_export_of_an_unsupported_head_size_fails_clearly(tmp_path):
    from edge_vlm.export.pipeline import ExportOptions, export_bundle
    from edge_vlm.model.checkpoint import save_checkpoint
    from edge_vlm.model.factory import random_model, small_tokenizer

    tokenizer = small_tokenizer()
    model = random_model("tiny", tokenizer, num_attention_heads=4, num_key_value_heads=4)
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "four-heads")
    with pytest.raises(EdgeVLMError, match="GroupQueryAttention: head size 40"):
        export_bundle(ExportOptions(model=checkpoint, out=tmp_path / "b", precision="fp32"), log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["four-heads"]  # no bundle, no temp folder
