"""Image-token selection on the PyTorch side: the kept tokens are those a hand-written CLS-attention reference picks,
the merge is the hand-computed average, K = N leaves the model exactly as it was, and impossible settings are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edge_vlm.engine import GenerationConfig, answer
from edge_vlm.errors import EdgeVLMError
from edge_vlm.image_tokens import TokenSelection, choose
from edge_vlm.model.engine import TorchEngine
from edge_vlm.model.factory import random_model, small_tokenizer
from edge_vlm.model.token_selection import select_tokens


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return random_model("tiny", tokenizer, seed=0, weight_std=0.05)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))


def _reference_cls_attention(model, pixels) -> torch.Tensor:
    """[B, N] the CLS token's attention over the patches at the feature layer, averaged over heads, from the CLIP
    weights with plain tensor operations: the layer that outputs hidden state -2 is layers[-2], whose input is
    hidden state -3."""
    tower = model.model.vision_tower
    layer = tower.encoder.layers[-2]
    with torch.no_grad():
        x = tower(pixels, output_hidden_states=True).hidden_states[-3]
        x = F.layer_norm(x, (x.shape[-1],), layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
        q = x @ layer.self_attn.q_proj.weight.T + layer.self_attn.q_proj.bias
        k = x @ layer.self_attn.k_proj.weight.T + layer.self_attn.k_proj.bias
    heads = model.config.vision_config.num_attention_heads
    d = x.shape[-1] // heads
    per_head = []
    for h in range(heads):
        qh, kh = q[:, 0, h * d:(h + 1) * d], k[:, :, h * d:(h + 1) * d]  # [B, d], [B, T, d]
        per_head.append(torch.softmax(torch.einsum("bd,btd->bt", qh, kh) / d ** 0.5, dim=-1))
    return torch.stack(per_head).mean(0)[:, 1:]


def test_kept_tokens_are_the_reference_top_k_in_patch_order(model, pixels):
    attention = _reference_cls_attention(model, pixels)
    with torch.no_grad():
        patches = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        full = model.image_features(pixels)
    for k in (1, 5, 15):
        expected = attention.topk(k, dim=1).indices.sort(dim=1).values  # [B, k], ascending patch index
        model.set_token_selection(choose(k, 0, 16))
        try:
            with torch.no_grad():
                kept = model.vision_features(pixels)
                projected = model.image_features(pixels)
        finally:
            model.set_token_selection(None)
        assert kept.shape == (2, k, patches.shape[-1])
        for b in range(2):
            assert torch.equal(kept[b], patches[b, expected[b]])
            assert torch.allclose(projected[b], full[b, expected[b]], atol=1e-6)  # the projector works per token
        assert not torch.equal(expected[0], expected[1]) or k == 15  # the two pictures keep different patches


def test_contextual_tokens_are_the_averages_of_their_groups():
    """6 patches of 2 features, scores keep patches 1 and 4; the rest (0, 2, 3, 5) with 2 contextual tokens: the
    targets are rest[0] = patch 0 and rest[2] = patch 3 (evenly spaced), patch 2's key is nearest patch 3's,
    patch 5's nearest patch 0's."""
    patches = torch.tensor([[[1., 0.], [10., 10.], [2., 2.], [4., 4.], [20., 20.], [3., 1.]]])
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.0, 0.8, 0.3]])
    keys = torch.tensor([[[1., 0.], [0., 0.], [0., 1.], [0.1, 1.], [0., 0.], [1., 0.2]]])
    got = select_tokens(patches, scores, keys, TokenSelection(2, 2))
    expected = torch.tensor([[[10., 10.], [20., 20.], [(1 + 3) / 2, (0 + 1) / 2], [(4 + 2) / 2, (4 + 2) / 2]]])
    assert torch.equal(got, expected)
    assert torch.equal(select_tokens(patches, scores, keys, TokenSelection(2)), expected[:, :2])


def test_every_token_is_the_unchanged_model_bit_for_bit(model, tokenizer, pixels):
    """--image-tokens N chooses no selection, and the model computes what the code before selection computed:
    the projector over hidden state -2 without CLS; the logits of a whole prompt are identical too."""
    assert choose(16, None, 16) is None and choose(None, None, 16) is None
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    with torch.no_grad():
        before = projector(tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
        now = model.image_features(pixels)
        ids = torch.tensor([tokenizer.encode_prompt("USER: <image>\nWhat colour? ASSISTANT:", 16)] * 2)
        logits = model(input_ids=ids, pixel_values=pixels).logits
        embeds = model.get_input_embeddings()(ids)
        embeds[ids == tokenizer.image_token_id] = before.reshape(-1, before.shape[-1])
        expected = model(inputs_embeds=embeds).logits
    assert torch.equal(now, before)
    assert torch.equal(logits, expected)


def test_torch_engine_answers_with_k_tokens(tokenizer):
    from PIL import Image

    model = random_model("tiny", tokenizer, seed=0, weight_std=0.05)
    engine = TorchEngine(model, tokenizer, token_selection=choose(6, 2, 16))
    assert (engine.num_image_tokens, engine.patch_tokens) == (6, 16)
    assert engine.token_selection == TokenSelection(4, 2)
    prepared = engine.prepare_image(Image.new("RGB", (64, 48), (200, 30, 30)))
    assert prepared.features.shape == (1, 6, 160)
    assert prepared.prefix_ids.count(tokenizer.image_token_id) == 6
    assert isinstance(answer(engine, prepared, "What colour?", config=GenerationConfig(max_new_tokens=4)), str)


@pytest.mark.parametrize("k,contextual,match", [
    (17, None, "--image-tokens 17 is not possible: the model has 16 image tokens, choose a whole number from 1 to 16"),
    (0, None, "--image-tokens 0 is not possible"),
    (-3, None, "--image-tokens -3 is not possible"),
    (8, 8, "contextual tokens 8 must be a whole number from 0 to 7"),
    (8, -1, "contextual tokens -1 must be"),
    (16, 2, "keeps every image token, so nothing is left to merge"),
    (None, 2, "contextual tokens (2) need --image-tokens K below"),
])
def test_impossible_settings_are_refused(k, contextual, match):
    with pytest.raises(EdgeVLMError) as caught:
        choose(k, contextual, 16)
    assert match in str(caught.value) and "\n" not in str(caught.value)


def test_kept_tokens_stay_in_patch_order_in_bfloat16():
    """576 patches with bfloat16 scores (a bf16 model): the kept patches are the top-scored ones in ascending patch
    order (bfloat16 holds whole numbers exactly only up to 256, so the ordering must not be computed in it)."""
    scores = torch.rand(2, 576, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    patches = torch.arange(576, dtype=torch.float32).view(1, 576, 1).expand(2, -1, 3).contiguous()
    kept = select_tokens(patches, scores, torch.ones(2, 576, 4), TokenSelection(144))[..., 0]
    expected = scores.topk(144, dim=1).indices.sort(dim=1).values.float()
    assert torch.equal(kept, expected)
