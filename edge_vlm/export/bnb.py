"""bitsandbytes INT8 / NF4 loading: the PyTorch-side quantization for GPU users (`edge-vlm ask --load-in-4bit`).

Only the language model's Linear layers are quantized. The vision tower, the projector and the lm_head stay in
full precision: they are small next to the decoder, and the vision features and the logits are where errors show
most. In transformers 5 `llm_int8_skip_modules` must name full module paths; short names are ignored silently
(docs/stack.md), so a check after loading makes sure the skip list took effect.

On CPUs with AVX-512 BF16, bitsandbytes re-packs each 4-bit weight for its CPU kernel on the first inference call,
and that packing only accepts some shapes (`cpu_4bit_packable`); 4-bit loading on such a CPU keeps the other Linear
layers in float and says so on stderr.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from edge_vlm.errors import EdgeVLMError

SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
# _convert_weight_packed_for_cpu(block_n=32) in bitsandbytes 0.50.2 packs output rows 32 at a time.
CPU_PACK_ROWS = 32


def cpu_4bit_packing() -> bool:
    """Whether bitsandbytes re-packs 4-bit weights for its CPU kernel on this machine.

    Mirrors bitsandbytes 0.50.2: `Linear4bit.__init__` sets `support_avx512bf16_for_cpu = has_avx512bf16()` (the
    native library's CPU check for AVX-512 BF16) and `Linear4bit.forward` then calls
    `functional._convert_weight_packed_for_cpu` on its first call with an input on CPU, in eval mode, without grad.
    A bitsandbytes without `functional.has_avx512bf16` has no such path."""
    import bitsandbytes.functional as bnb_functional

    check = getattr(bnb_functional, "has_avx512bf16", None)
    return bool(check()) if check is not None else False


def nf4_blocksize() -> int:
    """The block size of `Linear4bit`'s weights (one absmax per block): `Params4bit`'s default (64 in 0.50.2)."""
    import bitsandbytes as bnb
    import torch

    return int(bnb.nn.Params4bit(torch.empty(0)).blocksize)


def cpu_4bit_packable(in_features: int, out_features: int, blocksize: int) -> bool:
    """Whether bitsandbytes' CPU packing accepts an [out_features, in_features] 4-bit weight.

    Mirrors `functional._convert_weight_packed_for_cpu` (bitsandbytes 0.50.2): it reshapes the per-block scales to
    [out, in // blocksize] (a RuntimeError unless in_features is a multiple of the block size) and asserts that
    out_features is a multiple of block_n = 32."""
    return in_features % blocksize == 0 and out_features % CPU_PACK_ROWS == 0


def _linear_shapes(path: Path) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every plain Linear the checkpoint's model has, by the module name transformers
    matches `llm_int8_skip_modules` against. Built on the meta device from config.json: no weight is read."""
    import torch
    from transformers import LlavaConfig

    from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration

    try:
        config = LlavaConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise EdgeVLMError(f"cannot read {path / 'config.json'}: {exc}") from exc
    with torch.device("meta"):
        model = LlavaPhiForConditionalGeneration(config)
    return {name: (m.in_features, m.out_features) for name, m in model.named_modules() if type(m) is torch.nn.Linear}


def nf4_skip_modules(directory: str | Path, keep_unpackable: bool, instead: str, note: bool = True) -> list[str]:
    """`llm_int8_skip_modules` for NF4: SKIP_MODULES, plus with `keep_unpackable` every other Linear layer that
    bitsandbytes' CPU packing cannot take (`cpu_4bit_packable`), with one note on stderr saying how many and why.
    A model none of whose quantizable layers could be packed is refused, suggesting `instead`."""
    skip = list(SKIP_MODULES)
    if not keep_unpackable:
        return skip
    path = Path(directory)
    blocksize = nf4_blocksize()
    shapes = {name: shape for name, shape in _linear_shapes(path).items()
              if not any(name == p or name.startswith(p + ".") for p in SKIP_MODULES)}
    floats = [name for name, (n_in, n_out) in shapes.items() if not cpu_4bit_packable(n_in, n_out, blocksize)]
    rule = (f"bitsandbytes' AVX-512 BF16 CPU kernel packs a 4-bit weight only when its input width is a multiple of "
            f"{blocksize} and its output width a multiple of {CPU_PACK_ROWS}")
    if floats and len(floats) == len(shapes):
        raise EdgeVLMError(f"{path}: none of the language model's {len(shapes)} Linear layers can be kept in 4-bit "
                           f"({rule}): {instead}")
    if floats and note:
        widths = ", ".join(f"{n_in}->{n_out} x{count}"
                           for (n_in, n_out), count in Counter(shapes[name] for name in floats).items())
        print(f"note: {len(floats)} of {len(shapes)} language-model Linear layers stay in float ({widths}): {rule}",
              file=sys.stderr)
    return skip + floats


def load_quantized(directory: str | Path, bits: int = 4, compute_dtype=None, device_map=None):
    """The checkpoint's model with its language model in bitsandbytes 8-bit (LLM.int8) or 4-bit NF4; eval mode.

    `compute_dtype` (4-bit only) defaults to bfloat16 on CUDA and float32 on CPU; `device_map` defaults to the GPU
    when there is one (bitsandbytes also runs on CPU, slowly). In 4-bit on a CPU where bitsandbytes re-packs weights
    (`cpu_4bit_packing`), the layers it cannot pack stay in float (`nf4_skip_modules`)."""
    import torch

    from edge_vlm.deps import require

    require("bitsandbytes")
    from transformers import BitsAndBytesConfig

    from edge_vlm.model.checkpoint import check_checkpoint_dir, refuse_partial_load
    from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration

    if bits not in (4, 8):
        raise EdgeVLMError(f"bitsandbytes loading takes 4 or 8 bits, got {bits}")
    path = check_checkpoint_dir(directory)
    cuda = torch.cuda.is_available()
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if cuda else torch.float32
    device_map = device_map or ({"": 0} if cuda else {"": "cpu"})
    if bits == 4:
        on_cpu = any(str(device) == "cpu" for device in device_map.values())
        skip = nf4_skip_modules(path, keep_unpackable=on_cpu and cpu_4bit_packing(),
                                instead="load it in 8-bit, or on a GPU")
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip)
    else:
        skip = list(SKIP_MODULES)
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    try:
        model, info = LlavaPhiForConditionalGeneration.from_pretrained(
            path, quantization_config=config, device_map=device_map, dtype=compute_dtype if bits == 4 else None,
            use_safetensors=True, output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise EdgeVLMError(f"cannot load {path} with bitsandbytes {bits}-bit: {exc}") from exc
    refuse_partial_load(path, info)  # transformers only warns about missing tensors (random values)
    _check_skipped(model, skip)
    return model.eval()


def _check_skipped(model, skip: list[str]) -> None:
    """The modules in `skip` hold no bitsandbytes layer, and the language model holds at least one."""
    import torch

    for prefix in skip:
        module = model.get_submodule(prefix)
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        if any(type(m).__module__.startswith("bitsandbytes") for m in linears):
            raise EdgeVLMError(f"internal: {prefix} was quantized although it is in llm_int8_skip_modules")
    quantized = [m for m in model.model.language_model.modules() if type(m).__module__.startswith("bitsandbytes")]
    if not quantized:
        raise EdgeVLMError("internal: bitsandbytes quantized none of the language model's layers")
