"""bitsandbytes loading (the PyTorch-side option): the language model is quantized, the skipped modules are not,
and the logits stay close to the full-precision model's."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("bits,layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_load_quantized(exportable_tiny, bits, layer):
    from edge_vlm.export.bnb import load_quantized
    from edge_vlm.model.checkpoint import load_checkpoint

    reference, tokenizer, _ = load_checkpoint(exportable_tiny, dtype=torch.float32)
    model = load_quantized(exportable_tiny, bits)
    assert type(model.model.language_model.layers[0].mlp.fc1).__name__ == layer
    for module in (model.lm_head, model.model.multi_modal_projector.linear_1,
                   model.model.vision_tower.encoder.layers[0].mlp.fc1):
        assert type(module) is torch.nn.Linear  # full paths in llm_int8_skip_modules took effect
    ids = torch.tensor([tokenizer.encode("USER: What is in the image? ASSISTANT:")])
    with torch.no_grad():
        got, expected = model(input_ids=ids).logits.float(), reference(input_ids=ids).logits
    got, expected = got - got.mean(-1, keepdim=True), expected - expected.mean(-1, keepdim=True)
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.99


def test_bad_bits(exportable_tiny):
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.export.bnb import load_quantized

    with pytest.raises(EdgeVLMError, match="4 or 8"):
        load_quantized(exportable_tiny, 3)
