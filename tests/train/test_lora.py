"""LoRA / QLoRA: the merged plain checkpoint gives the same logits as the peft model it came from."""

from __future__ import annotations

import pytest
import torch

from edge_vlm.train.loop import train


def _inputs(model, tokenizer):
    from edge_vlm.prompting import inference_prompt

    ids = tokenizer.encode_prompt(inference_prompt("What color is the square?"), model.num_image_tokens)
    generator = torch.Generator().manual_seed(0)
    size = model.config.vision_config.image_size
    return {"input_ids": torch.tensor([ids]), "pixel_values": torch.randn(1, 3, size, size, generator=generator)}


def _peft_logits(base, adapter_dir, inputs, training: bool = False):
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).train(training)
    with torch.no_grad():
        return peft_model(**inputs).logits


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
def test_merged_checkpoint_matches_the_peft_model(make_config, tiny_checkpoint, qlora):
    from edge_vlm.model.checkpoint import load_checkpoint

    if qlora:
        pytest.importorskip("bitsandbytes")
    config = make_config(max_steps=2, lr=1e-2, lora_r=8, lora_alpha=16, lora_dropout=0.0, qlora=qlora)
    result = train(config)
    adapter = result.final_dir.parent / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()

    merged, tokenizer, meta = load_checkpoint(result.final_dir)
    assert not meta.random_weights
    inputs = _inputs(merged, tokenizer)
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
    if qlora:  # the adapter was trained on the NF4 base: the reference is that 4-bit model with the adapter
        from edge_vlm.train.lora import qlora_quantization_config

        base, _, _ = load_checkpoint(tiny_checkpoint, quantization_config=qlora_quantization_config(tiny_checkpoint),
                                     device_map={"": "cpu"})
        # Run it as training ran: in training mode bitsandbytes' Linear4bit dequantizes and multiplies in fp32, while
        # in eval mode on an AVX-512 BF16 CPU it re-packs the weights for a kernel that computes in bf16 (~1e-4 off
        # here). The model has no dropout, so training mode changes nothing else.
        drops = {k: v for c in (base.config.text_config, base.config.vision_config)
                 for k, v in c.to_dict().items() if "drop" in k}
        assert not any(drops.values()), drops
        base.train()
    else:
        base, _, _ = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        base_logits = base(**inputs).logits
    reference = _peft_logits(base, adapter, inputs, training=qlora)
    assert (reference - base_logits).abs().max() > 1e-3  # the adapter really changes the model
    torch.testing.assert_close(merged_logits, reference, rtol=1e-4, atol=1e-4)
