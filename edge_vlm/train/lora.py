"""LoRA and QLoRA (peft, bitsandbytes) on the language model, and the merge that writes a plain checkpoint.

LoRA adapts the Phi Linear layers of the language model (never the CLIP tower's, which share the names fc1/fc2).
The stage's other trainable parts (projector, vision tower, lm_head when asked) are trained fully as peft
`modules_to_save`, so the saved adapter holds everything the run changed.
QLoRA loads the base in 4-bit NF4 (bitsandbytes); the projector, the vision tower and lm_head stay in full precision,
and so do the decoder layers bitsandbytes' AVX-512 BF16 CPU kernel cannot pack (edge_vlm.export.bnb.nf4_skip_modules)
on every machine, so that a run, its merge and its evaluation agree on which weights are 4-bit wherever they run.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from edge_vlm.deps import require
from edge_vlm.errors import EdgeVLMError
from edge_vlm.train.config import TrainConfig

ADAPTER_DIR = "adapter"
_MODULES_TO_SAVE = {"projector": "multi_modal_projector", "vision_tower": "vision_tower", "lm_head": "lm_head"}


def qlora_quantization_config(base_dir: str | Path, note: bool = True):
    """NF4 4-bit with double quantization (the QLoRA paper's choice) for the checkpoint in `base_dir`; compute in bf16
    on a GPU, fp32 on CPU. The layers bitsandbytes' CPU packing cannot take stay in float on every machine (not only
    on the CPUs that pack): the merge must dequantize exactly the layers the run trained against in 4-bit, and may
    run on another machine (`edge-vlm train --merge`)."""
    require("bitsandbytes")
    from transformers import BitsAndBytesConfig

    from edge_vlm.export.bnb import nf4_skip_modules

    skip = nf4_skip_modules(base_dir, keep_unpackable=True, instead="train it with plain LoRA (qlora: false)",
                            note=note)
    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=skip)


def lora_target_regex(names: list[str]) -> str:
    """A peft target_modules regex (full match) for the named Linear layers of the language model only."""
    alternatives = "|".join(re.escape(n) for n in names)
    return rf".*language_model\.layers\.\d+\..*\b(?:{alternatives})"


def wrap_lora(model, config: TrainConfig, parts: tuple[str, ...]):
    """The model with LoRA adapters on the language model; the other trainable parts as modules_to_save."""
    require("peft")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if "llm" not in parts:
        raise EdgeVLMError(f"LoRA adapts the language model, but stage {config.stage!r} trains only {list(parts)}: "
                           "set lora_r 0 or add llm to trainable")
    if config.qlora:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    # Under LoRA the language model (lm_head included) is adapted by the low-rank updates; lm_head trains fully
    # only when asked for explicitly.
    extra = [p for p in parts if p not in ("llm", "lm_head")] + (["lm_head"] if config.train_lm_head else [])
    lora_config = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=lora_target_regex(config.lora_target_modules),
        modules_to_save=[_MODULES_TO_SAVE[p] for p in extra] or None,
        bias="none", task_type=None,
    )
    return get_peft_model(model, lora_config)


def _dequantized_base_weights(base_dir: str | Path) -> dict[str, torch.Tensor]:
    """The base's Linear weights as QLoRA trained against them: quantized to NF4 (deterministic) and dequantized."""
    import bitsandbytes as bnb
    from peft.utils.integrations import dequantize_bnb_weight

    from edge_vlm.model.checkpoint import load_checkpoint

    device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    # note=False: the run said which layers stay in float when it loaded the same base
    config = qlora_quantization_config(base_dir, note=False)
    quantized, _, _ = load_checkpoint(base_dir, quantization_config=config, device_map=device_map)
    weights = {}
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weights[f"{name}.weight"] = dequantize_bnb_weight(module.weight).float().cpu()
    del quantized
    return weights


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, quantized_base: bool = False,
                  meta=None) -> Path:
    """Base checkpoint + saved adapter -> a plain checkpoint with the adapter merged in (fp32, safetensors).

    `quantized_base`: the adapter was trained with QLoRA, so it is merged into the NF4-dequantized base weights it
    was trained against (merging into the original fp32 weights would add the quantization error back as a change).
    """
    require("peft")
    from peft import PeftModel

    from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise EdgeVLMError(f"no adapter_config.json in {adapter_dir}: not a LoRA adapter directory")
    base, tokenizer, base_meta = load_checkpoint(base_dir)
    if quantized_base:
        missing, unexpected = base.load_state_dict(_dequantized_base_weights(base_dir), strict=False)
        if unexpected:
            raise EdgeVLMError(f"internal: dequantized weights do not match the base model: {unexpected[:3]}")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return save_checkpoint(merged, tokenizer, out_dir, meta or base_meta)
