"""The converter on checkpoints written the way LLaVA-Phi was released (tests/model/reference.py writes them with the
literal key names of that layout). The expected logits come from plain transformers modules (`CLIPVisionModel` +
`PhiForCausalLM`) loaded with the same tensors by the reference's own mapping.
"""

from __future__ import annotations

import json

import pytest
import torch

from edge_vlm.errors import EdgeVLMError
from edge_vlm.model.checkpoint import load_checkpoint
from edge_vlm.model.convert import convert_lp_checkpoint, split_fused_qkv
from edge_vlm.model.factory import small_tokenizer
from edge_vlm.prompting import inference_prompt
from tests.conftest import run_cli
from tests.model.reference import VOCAB, PlainLlavaPhi, fuse_qkv, released_tensors, write_released


def reference_and_converted_logits(tensors, converted_dir):
    """(reference logits, converted model's logits, converted model, its tokenizer) on one image + prompt."""
    model, tokenizer, meta = load_checkpoint(converted_dir)
    reference = PlainLlavaPhi(vocab_size=VOCAB, image_token_id=tokenizer.image_token_id).load_released(tensors).eval()
    ids = torch.tensor([tokenizer.encode_prompt(inference_prompt("Is there a dog?"), model.num_image_tokens)])
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = reference(ids, pixels, mask)
        got = model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    return expected, got, model, meta


VARIANTS = {
    # name: (fused qkv, weight form, vision prefix, GPT-2 tokenizer files, a saved position_ids buffer)
    "fused-safetensors": (True, "safetensors", None, False, False),
    "split-safetensors": (False, "safetensors", None, False, False),
    "fused-safetensors-shards": (True, "safetensors-shards", None, False, False),
    "fused-bin-shards": (True, "bin-shards", None, True, True),
    "split-bin": (False, "bin", None, False, True),
    "llava15-nesting": (True, "safetensors", "model.vision_tower.vision_tower.vision_model.", False, False),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_released_checkpoint_converts_to_the_reference_logits(tmp_path, variant):
    fused, form, vision_prefix, gpt2_files, position_ids = VARIANTS[variant]
    tokenizer = small_tokenizer()
    assert len(tokenizer) <= VOCAB
    tensors = released_tensors()
    on_disk = fuse_qkv(tensors) if fused else dict(tensors)
    if vision_prefix:
        on_disk = {k.replace("model.vision_tower.vision_model.", vision_prefix): v for k, v in on_disk.items()}
    if position_ids:  # transformers < 4.31 saved CLIP's position ids; a buffer the converter must drop
        on_disk["model.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    assert ("model.layers.0.self_attn.query_key_value.weight" in on_disk) == fused
    src = write_released(tmp_path / "LLaVA-Phi-3B", tokenizer, on_disk, form=form, gpt2_files=gpt2_files)

    convert_lp_checkpoint(src, tmp_path / "out")
    expected, got, model, meta = reference_and_converted_logits(tensors, tmp_path / "out")

    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    assert model.config.text_config.rope_parameters["partial_rotary_factor"] == 0.4
    assert torch.equal(model.lm_head.bias, tensors["lm_head.bias"])
    assert meta.image.aspect == "pad" and meta.source == "converted from LP checkpoint LLaVA-Phi-3B"
    if gpt2_files:  # the tokenizer rebuilt from vocab.json + merges.txt encodes as the original does
        loaded = load_checkpoint(tmp_path / "out")[1]
        text = inference_prompt("What colour is the square?")
        assert loaded.encode(text) == tokenizer.encode(text)
    for path in (tmp_path / "out").iterdir():  # nothing written records where the user keeps files
        assert str(tmp_path) not in path.read_text(errors="replace"), path


def test_the_logit_check_catches_a_wrong_qkv_layout(tmp_path):
    """The comparison above can fail: the same tensors fused in the other plausible order (all q rows, then all k,
    then all v) convert without complaint, since the shapes agree, but give other logits."""
    tensors = released_tensors()
    on_disk = fuse_qkv(tensors)
    for i in range(2):
        for kind in ("weight", "bias"):
            on_disk[f"model.layers.{i}.self_attn.query_key_value.{kind}"] = torch.cat(
                [tensors[f"model.layers.{i}.self_attn.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj")])
    src = write_released(tmp_path / "lp", small_tokenizer(), on_disk)
    convert_lp_checkpoint(src, tmp_path / "out")
    expected, got, _, _ = reference_and_converted_logits(tensors, tmp_path / "out")
    assert (got - expected).abs().max() > 1e-3


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
    tensors = fuse_qkv(released_tensors())
    tensors["model.something_new.weight"] = torch.zeros(2)
    del tensors["lm_head.bias"]
    src = write_released(tmp_path / "lp", small_tokenizer(), tensors)
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
