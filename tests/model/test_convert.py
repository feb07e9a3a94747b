"""The converter: an LP-layout checkpoint written from plain modules converts and gives the reference's logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from edge_vlm.errors import EdgeVLMError
from edge_vlm.model.checkpoint import load_checkpoint
from edge_vlm.model.convert import convert_lp_checkpoint, split_fused_qkv
from edge_vlm.model.factory import small_tokenizer
from edge_vlm.model.presets import TINY
from tests.conftest import run_cli
from tests.model.reference import PlainLlavaPhi


def _lp_config(vocab_size: int) -> dict:
    """An LP config.json as transformers 4.36 wrote it: Phi keys and rope settings at the top level (reference §7)."""
    text = TINY["text"]
    return {
        "model_type": "llava_phi",
        "architectures": ["LlavaPhiForCausalLM"],
        **{k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                "hidden_act", "max_position_embeddings", "layer_norm_eps")},
        "vocab_size": vocab_size,
        "partial_rotary_factor": 0.4,
        "rope_theta": 10000.0,
        "image_aspect_ratio": "pad",
        "vision_config": {
            "vision_tower": {**TINY["vision"], "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch"},
            "mm_projector": {"mm_projector_type": "mlp2x_gelu", "mm_hidden_size": TINY["vision"]["hidden_size"],
                             "hidden_size": text["hidden_size"]},
        },
    }


def _write_lp(directory, reference, tokenizer, use_bin=False):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(_lp_config(len(tokenizer))))
    state = {k: v.contiguous() for k, v in reference.lp_state_dict().items()}
    if use_bin:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file(state, str(directory / "model.safetensors"))
    tokenizer.backend.save(str(directory / "tokenizer.json"))
    return directory


def _reference_logits(reference, model, tokenizer):
    from edge_vlm.prompting import inference_prompt

    ids = torch.tensor([tokenizer.encode_prompt(inference_prompt("Is there a dog?"), model.num_image_tokens)])
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        return reference(ids, pixels, mask), model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits


@pytest.mark.parametrize("use_bin", [False, True], ids=["safetensors", "bin-weights-only"])
def test_lp_checkpoint_converts_to_the_same_logits(tmp_path, use_bin):
    tokenizer = small_tokenizer()
    reference = PlainLlavaPhi(vocab_size=len(tokenizer), image_token_id=tokenizer.image_token_id, seed=7).eval()
    src = _write_lp(tmp_path / "lp", reference, tokenizer, use_bin=use_bin)
    convert_lp_checkpoint(src, tmp_path / "out")
    model, loaded_tokenizer, meta = load_checkpoint(tmp_path / "out")
    assert model.config.text_config.rope_parameters["partial_rotary_factor"] == 0.4
    assert meta.image.aspect == "pad"
    expected, got = _reference_logits(reference, model, loaded_tokenizer)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_fused_qkv_split_follows_the_head_interleaved_layout():
    heads, head_dim, hidden = 2, 3, 4
    # Row r of the fused weight is (head, j, d) in row-major order; fill each row with its own coordinates.
    fused = torch.zeros(heads * 3 * head_dim, hidden)
    for h in range(heads):
        for j in range(3):
            for d in range(head_dim):
                fused[(h * 3 + j) * head_dim + d] = 100 * j + 10 * h + d
    q, k, v = split_fused_qkv(fused, heads)
    for j, part in enumerate((q, k, v)):
        for h in range(heads):
            for d in range(head_dim):
                assert part[h * head_dim + d, 0] == 100 * j + 10 * h + d


def test_unknown_layout_is_refused_with_the_keys_listed(tmp_path):
    tokenizer = small_tokenizer()
    reference = PlainLlavaPhi(vocab_size=len(tokenizer), image_token_id=tokenizer.image_token_id)
    src = _write_lp(tmp_path / "lp", reference, tokenizer)
    state = {k: v.contiguous() for k, v in reference.lp_state_dict().items()}
    state["model.something_new.weight"] = torch.zeros(2)
    del state["lm_head.bias"]
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(EdgeVLMError) as error:
        convert_lp_checkpoint(src, tmp_path / "out")
    assert "lm_head.bias" in str(error.value) and "model.something_new.weight" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_convert_cli_errors_are_one_line(tmp_path):
    result = run_cli("convert", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "not found" in result.stderr
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = run_cli("convert", str(tmp_path / "plain"), str(tmp_path / "out"))
    assert result.returncode == 2 and "llava_phi" in result.stderr
