"""The project's model against an independent reference built from plain transformers modules."""

from __future__ import annotations

import torch

from edge_vlm.model.factory import small_tokenizer
from edge_vlm.model.modeling import build_model, make_config
from edge_vlm.model.presets import LLAVA_PHI_2, TINY, count_parameters
from edge_vlm.prompting import inference_prompt
from tests.model.reference import PlainLlavaPhi


def _batch(tokenizer, num_image_tokens):
    prompts = [inference_prompt("What colour is the large circle on the left?"), inference_prompt("How many?")]
    rows = [tokenizer.encode_prompt(p, num_image_tokens) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((2, width), tokenizer.eos_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, row in enumerate(rows):  # right padding
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def test_logits_match_plain_transformers_reference():
    tokenizer = small_tokenizer()
    reference = PlainLlavaPhi(vocab_size=len(tokenizer), image_token_id=tokenizer.image_token_id).eval()
    model = build_model(make_config("tiny", image_token_id=tokenizer.image_token_id, vocab_size=len(tokenizer)))
    model.load_state_dict(reference.llava_state_dict(), strict=True)
    assert model.lm_head.bias.abs().sum() > 0  # the bias is real and loaded

    ids, mask = _batch(tokenizer, model.num_image_tokens)
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids, pixels, mask)
        got = model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    valid = mask.bool()
    assert torch.allclose(got[valid], expected[valid], atol=1e-5, rtol=0), (got - expected)[valid].abs().max()
    last = mask.sum(1) - 1  # the two prompts differ after the shared system prompt and image
    assert not torch.allclose(got[0, last[0]], got[1, last[1]])
    assert not torch.allclose(pixels[0], pixels[1])


def test_bias_survives_save_and_load(tmp_path):
    from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint

    tokenizer = small_tokenizer()
    model = build_model(make_config("tiny", image_token_id=tokenizer.image_token_id, vocab_size=len(tokenizer)))
    with torch.no_grad():
        model.lm_head.bias.normal_()
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.lm_head.bias, model.lm_head.bias)
    assert loaded.config.text_config.rope_parameters["partial_rotary_factor"] == 0.4
    assert not torch.equal(loaded.lm_head.weight, loaded.model.language_model.embed_tokens.weight)


def test_parameter_count_formula_matches_built_model():
    tokenizer = small_tokenizer()
    model = build_model(make_config("tiny", image_token_id=tokenizer.image_token_id))
    counts = count_parameters(TINY)
    assert counts["vision"] == sum(p.numel() for p in model.model.vision_tower.parameters())
    assert counts["projector"] == sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    llm = sum(p.numel() for p in model.model.language_model.parameters()) + sum(p.numel() for p in model.lm_head.parameters())
    assert counts["llm"] == llm


def test_full_size_preset_shapes_and_count():
    config = make_config("llava-phi-2")
    with torch.device("meta"):
        model = build_model(config, seed=None)
    total = sum(p.numel() for p in model.parameters())
    assert total == count_parameters(LLAVA_PHI_2)["total"]
    assert 3.0e9 < total < 3.2e9  # the paper's ~3.1 B
    assert model.num_image_tokens == 576
    assert config.text_config.rope_parameters["partial_rotary_factor"] == 0.4
    assert model.lm_head.bias is not None
