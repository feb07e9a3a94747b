"""compose_checkpoint: CLIP + Phi (+ a fresh projector) -> a checkpoint whose parts compute what the originals do."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, PhiConfig, PhiForCausalLM

from edge_vlm.errors import EdgeVLMError
from edge_vlm.train.compose import compose_checkpoint


@pytest.fixture
def pretrained_parts(tmp_path):
    from edge_vlm.model.factory import small_tokenizer

    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                              num_attention_heads=4, image_size=28, patch_size=14, projection_dim=64))
    phi = PhiForCausalLM(PhiConfig(vocab_size=1024, hidden_size=80, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=128,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.4}))
    with torch.no_grad():  # non-zero biases everywhere, lm_head's included
        for param in [*vision.parameters(), *phi.parameters()]:
            param.add_(torch.randn_like(param) * 0.02)
    vision.save_pretrained(tmp_path / "clip")
    phi.save_pretrained(tmp_path / "phi")
    small_tokenizer().save(tmp_path / "phi")
    return vision.eval(), phi.eval(), tmp_path


def test_composed_parts_match_the_originals(pretrained_parts):
    from edge_vlm.model.checkpoint import load_checkpoint

    vision, phi, root = pretrained_parts
    out = compose_checkpoint(root / "clip", root / "phi", root / "llava")
    model, tokenizer, _ = load_checkpoint(out)
    ids = torch.tensor([tokenizer.encode("USER: What color is the square? ASSISTANT: red")])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, phi(input_ids=ids).logits)
        pixels = torch.randn(2, 3, 28, 28)
        theirs = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        ours = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(ours, theirs)
    assert model.config.text_config.rope_parameters["partial_rotary_factor"] == 0.4
    assert model.lm_head.bias is not None and model.lm_head.bias.abs().sum() > 0


def test_compose_names_a_missing_directory(tmp_path):
    with pytest.raises(EdgeVLMError, match="no config.json"):
        compose_checkpoint(tmp_path / "nope", tmp_path, tmp_path / "out")
