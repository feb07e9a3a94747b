"""bitsandbytes INT8 / NF4 loading: the PyTorch-side quantization for GPU users (`edge-vlm ask --load-in-4bit`).

Only the language model's Linear layers are quantized. The vision tower, the projector and the lm_head stay in
full precision: they are small next to the decoder, and the vision features and the logits are where errors show
most. In transformers 5 `llm_int8_skip_modules` must name full module paths; short names are ignored silently
(stack.md), so a check after loading makes sure the skip list took effect.
"""

from __future__ import annotations

from pathlib import Path

from edge_vlm.errors import EdgeVLMError

SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


def load_quantized(directory: str | Path, bits: int = 4, compute_dtype=None, device_map=None):
    """The checkpoint's model with its language model in bitsandbytes 8-bit (LLM.int8) or 4-bit NF4; eval mode.

    `compute_dtype` (4-bit only) defaults to bfloat16 on CUDA and float32 on CPU; `device_map` defaults to the GPU
    when there is one (bitsandbytes also runs on CPU, slowly, for in_features >= 64)."""
    import torch

    from edge_vlm.deps import require

    require("bitsandbytes")
    from transformers import BitsAndBytesConfig

    from edge_vlm.model.checkpoint import check_checkpoint_dir
    from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration

    if bits not in (4, 8):
        raise EdgeVLMError(f"bitsandbytes loading takes 4 or 8 bits, got {bits}")
    path = check_checkpoint_dir(directory)
    cuda = torch.cuda.is_available()
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if cuda else torch.float32
    if bits == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=SKIP_MODULES)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_MODULES)
    device_map = device_map or ({"": 0} if cuda else {"": "cpu"})
    try:
        model = LlavaPhiForConditionalGeneration.from_pretrained(
            path, quantization_config=config, device_map=device_map, dtype=compute_dtype if bits == 4 else None,
            use_safetensors=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise EdgeVLMError(f"cannot load {path} with bitsandbytes {bits}-bit: {exc}") from exc
    _check_skipped(model)
    return model.eval()


def _check_skipped(model) -> None:
    import torch

    for prefix in SKIP_MODULES:
        module = model.get_submodule(prefix)
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        if any(type(m).__module__.startswith("bitsandbytes") for m in linears):
            raise EdgeVLMError(f"internal: {prefix} was quantized although it is in llm_int8_skip_modules")
    quantized = [m for m in model.model.language_model.modules() if type(m).__module__.startswith("bitsandbytes")]
    if not quantized:
        raise EdgeVLMError("internal: bitsandbytes quantized none of the language model's layers")
