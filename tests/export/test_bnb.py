"""bitsandbytes loading (the PyTorch-side option): the language model is quantized, the skipped modules are not,
and the logits stay close to the full-precision model's.

On CPUs with AVX-512 BF16 bitsandbytes re-packs 4-bit weights for its CPU kernel, which takes only some shapes: there
the layers it cannot pack stay in float. The tests that need that path skip where bitsandbytes does not take it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bitsandbytes")

from edge_vlm.export.bnb import cpu_4bit_packable, cpu_4bit_packing  # noqa: E402

PACKING = cpu_4bit_packing()
needs_packing = pytest.mark.skipif(
    not PACKING, reason="bitsandbytes does not re-pack 4-bit weights for a CPU kernel on this machine (no AVX-512 BF16)")

# The exportable tiny checkpoint's decoder (tests/export/bundles.py): 2 layers, hidden 160 (2 heads of 80),
# intermediate 320. Per layer (in -> out): q_proj, k_proj, v_proj, dense 160 -> 160; fc1 160 -> 320; fc2 320 -> 160.
# bitsandbytes' CPU packing needs in a multiple of the block size 64 and out a multiple of 32: only fc2 (320 = 5 x 64).
_LAYER = "model.language_model.layers.{}.{}"
PACKED = {_LAYER.format(i, "mlp.fc2") for i in range(2)}
UNPACKABLE = {_LAYER.format(i, name) for i in range(2)
              for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense", "mlp.fc1")}


def _bnb_layers(model) -> set[str]:
    return {name for name, m in model.named_modules() if type(m).__module__.startswith("bitsandbytes")}


@pytest.mark.parametrize("bits,layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_load_quantized(exportable_tiny, bits, layer):
    from edge_vlm.export.bnb import load_quantized
    from edge_vlm.model.checkpoint import load_checkpoint

    reference, tokenizer, _ = load_checkpoint(exportable_tiny, dtype=torch.float32)
    model = load_quantized(exportable_tiny, bits)
    assert type(model.model.language_model.layers[0].mlp.fc2).__name__ == layer
    # every decoder Linear, except on a packing CPU in 4-bit, where only those it can pack
    assert _bnb_layers(model) == (PACKED if bits == 4 and PACKING else PACKED | UNPACKABLE)
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


def _linear4bit(n_in: int, n_out: int):
    """A bitsandbytes NF4 layer quantized on CPU, in inference mode (where bitsandbytes decides to pack)."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    return bnb.nn.Linear4bit(n_in, n_out, compute_dtype=torch.float32, quant_type="nf4").to("cpu").eval()


def test_machine_predicate_is_what_bitsandbytes_does():
    """On a packing CPU bitsandbytes packs a 320 -> 160 layer and fails on a 160 -> 160 one; elsewhere it runs both
    without packing: either way as cpu_4bit_packing() said."""
    x = torch.randn(3, 160)
    with torch.no_grad():
        square = _linear4bit(160, 160)
        if PACKING:
            with pytest.raises(RuntimeError, match="invalid for input of size"):
                square(x)
        else:
            assert square(x).shape == (3, 160)
            assert not getattr(square.weight.quant_state, "packing_format_for_cpu", False)
        wide = _linear4bit(320, 160)
        assert wide(torch.randn(3, 320)).shape == (3, 160)
    assert getattr(wide.weight.quant_state, "packing_format_for_cpu", False) == PACKING


# (in, out, packable) by hand: in must be a multiple of 64, out of 32
SHAPES = [(160, 160, False), (320, 160, True), (160, 320, False), (64, 32, True), (128, 96, True), (128, 48, False),
          (96, 64, False), (64, 16, False)]


@needs_packing
@pytest.mark.parametrize("n_in,n_out,packable", SHAPES)
def test_shape_predicate_is_what_bitsandbytes_packs(n_in, n_out, packable):
    assert cpu_4bit_packable(n_in, n_out, blocksize=64) is packable
    layer = _linear4bit(n_in, n_out)
    with torch.no_grad():
        if packable:
            layer(torch.randn(2, n_in))
            assert layer.weight.quant_state.packing_format_for_cpu
        else:
            with pytest.raises((RuntimeError, AssertionError)):
                layer(torch.randn(2, n_in))


@needs_packing
def test_packing_cpu_keeps_unpackable_layers_in_float(exportable_tiny, capsys):
    import bitsandbytes as bnb

    from edge_vlm.export.bnb import load_quantized
    from edge_vlm.model.checkpoint import load_checkpoint

    reference, _, _ = load_checkpoint(exportable_tiny, dtype=torch.float32)
    model = load_quantized(exportable_tiny, 4)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "10 of 12 language-model Linear layers stay in float" in notes[0], notes
    assert _bnb_layers(model) == PACKED
    floats = dict(model.named_modules())
    for name in UNPACKABLE:  # kept as the checkpoint's own float weights
        assert type(floats[name]) is torch.nn.Linear
        assert torch.equal(floats[name].weight, reference.get_submodule(name).weight)
    generator = torch.Generator().manual_seed(0)
    for name in PACKED:  # the CPU kernel's output (bf16 inside) against the dequantized weights in fp32
        layer = model.get_submodule(name)
        weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        x = torch.randn(5, layer.in_features, generator=generator)
        with torch.no_grad():
            expected = torch.nn.functional.linear(x, weight, layer.bias.float())
            got = layer(x)
        assert layer.weight.quant_state.packing_format_for_cpu  # the packed kernel really ran
        torch.testing.assert_close(got, expected, rtol=0, atol=0.02 * float(expected.abs().max()))


@needs_packing
def test_packing_cpu_refuses_a_model_with_no_packable_layer(tmp_path):
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.export.bnb import load_quantized
    from edge_vlm.model.checkpoint import save_checkpoint
    from edge_vlm.model.factory import random_model, small_tokenizer

    # intermediate 480 = 7.5 x 64: fc2 (480 -> 160) cannot be packed either, so no decoder layer can
    tokenizer = small_tokenizer()
    model = random_model("tiny", tokenizer, weight_std=0.05, intermediate_size=480)
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "odd")
    with pytest.raises(EdgeVLMError, match=r"none of the language model's 12 Linear layers can be kept in 4-bit"):
        load_quantized(checkpoint, 4)
