"""Bytes read per decoded token: the analytic count against a hand computation for llava-phi-2, and against the
real parameters / ONNX initializers of built models."""

from __future__ import annotations

import pytest

from edge_vlm.bench.roofline import (
    FORMATS,
    WeightFormat,
    analytic_decode_bytes,
    decode_context,
    kv_cache_bytes,
    roofline,
)

# Phi-2 by hand (docs/model.md): hidden 2560, 32 layers, MLP 10240, 32 heads of 80, vocab 51200.
H, L, FF, V = 2560, 32, 10240, 51200
PHI2_TEXT = {"hidden_size": H, "intermediate_size": FF, "num_hidden_layers": L, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": V}


def test_llava_phi2_fp32_bytes_per_token_by_hand():
    from edge_vlm.model.presets import LLAVA_PHI_2

    context = 632
    counted = analytic_decode_bytes(LLAVA_PHI_2["text"], "fp32", context)
    # per layer: q, k, v, dense 2560x2560 each = 26,214,400; fc1 + fc2 2560x10240 each = 52,428,800 weights
    per_layer_weights = 4 * 6_553_600 + 2 * 26_214_400
    assert per_layer_weights == 78_643_200
    assert counted.matmul_weights == 32 * 78_643_200 * 4 == 10_066_329_600
    # the unquantized lm_head: 51200 x 2560 fp32 = 524,288,000 bytes (the "0.5 GB per token")
    assert counted.lm_head == 524_288_000
    # per layer: biases of q, k, v, dense (4 x 2560), fc1 (10240), fc2 (2560) + input LayerNorm weight and bias
    # (2 x 2560) = 28,160; then the final LayerNorm (2 x 2560) and the lm_head bias (51200)
    assert counted.vectors == (32 * 28_160 + 5_120 + 51_200) * 4 == 3_829_760
    assert counted.embedding_row == 2560 * 4
    # KV: 2 (k, v) x 32 layers x 2560 x 632 positions x 4 bytes
    assert counted.kv_cache == 2 * 32 * 2560 * 632 * 4 == 414_187_520
    assert counted.total == 10_066_329_600 + 524_288_000 + 3_829_760 + 10_240 + 414_187_520


def test_int4_block32_counts_packed_nibbles_and_scales_by_hand():
    counted = analytic_decode_bytes(PHI2_TEXT, "int4", 600)
    # 4-bit: half a byte per weight, plus one fp32 scale per 32 weights of each output row
    per_layer = 0
    for rows, cols in [(H, H)] * 4 + [(FF, H), (H, FF)]:
        per_layer += rows * cols // 2 + rows * (cols // 32) * 4
    assert counted.matmul_weights == L * per_layer == 1_572_864_000
    assert counted.lm_head == 524_288_000  # still fp32: it is a quarter of the INT4 traffic
    assert counted.kv_cache == 2 * L * H * 600 * 4


def test_asymmetric_zero_points_are_packed():
    fmt = WeightFormat(4, block_size=32, scale_bytes=2, zero_points=True)
    # 64 x 128 weights: 4096 bytes of nibbles, 64*4 blocks -> 512 bytes of fp16 scales + 128 bytes of packed zeros
    assert fmt.matrix_bytes(64, 128) == 4096 + 512 + 128


def test_tiny_preset_analytic_matches_the_built_model_parameters():
    """The fp32 count from shapes equals the bytes of the real PyTorch decoder parameters (numel x 4)."""
    from edge_vlm.bench.backends.torch_backend import torch_decode_bytes
    from edge_vlm.model.factory import random_model, small_tokenizer
    from edge_vlm.model.presets import TINY

    tokenizer = small_tokenizer()
    model = random_model("tiny", tokenizer)
    text = {**TINY["text"], "vocab_size": model.config.text_config.vocab_size}
    analytic = analytic_decode_bytes(text, "fp32", 100)
    language = model.model.language_model
    params = sum(p.numel() for n, p in language.named_parameters() if not n.startswith("embed_tokens"))
    params += sum(p.numel() for p in model.lm_head.parameters())
    assert analytic.matmul_weights + analytic.lm_head + analytic.vectors == params * 4
    from_torch = torch_decode_bytes(model, 100)
    assert from_torch.total == analytic.total


def test_bound_and_percent():
    counted = analytic_decode_bytes(PHI2_TEXT, "int4", decode_context(600, 64))
    line = roofline(counted, 32.0, 10.0, "test")
    assert line["bound_tokens_per_s"] == pytest.approx(32e9 / counted.total)
    assert line["percent_of_bound"] == pytest.approx(1000.0 / line["bound_tokens_per_s"])
    assert roofline(counted, None, 10.0, "none")["percent_of_bound"] is None


def test_mean_decode_context():
    # steps attend to 601 ... 664 positions: mean 632.5
    assert decode_context(600, 64) == sum(range(601, 665)) / 64
    assert kv_cache_bytes(PHI2_TEXT, 1, 2) == 2 * L * H * 2


def test_every_backend_precision_has_a_format():
    from edge_vlm.bench.settings import ORT_PRECISIONS, TORCH_PRECISIONS

    assert set(TORCH_PRECISIONS) | set(ORT_PRECISIONS) <= set(FORMATS)
