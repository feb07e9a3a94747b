"""Bytes read per decoded token, and the decode speed bound = memory bandwidth / those bytes. Torch-free.

One decode step reads every weight of every decoder matmul (at its stored size: packed 4-bit values plus their
block scales and zero points), the lm_head (left unquantized by the ONNX builders: 51200 x 2560 fp32 = 524 MB for
Phi-2, often a quarter of an INT4 model's traffic), the biases and LayerNorm vectors, one row of the embedding table,
and the whole KV cache of the context so far. Activations are a few KB and are left out.

Three ways to count, so a preset's analytic figure can be checked against real artifacts:
  - `analytic_decode_bytes`: from the model shapes and a weight format (presets, random-weight runs);
  - `onnx_decode_bytes`: from the decoder graph's initializers (a bundle: the bytes the runtime really holds);
  - edge_vlm.bench.backends.torch_backend.torch_decode_bytes: from a loaded PyTorch model's parameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_vlm.errors import EdgeVLMError


@dataclass(frozen=True)
class WeightFormat:
    """How one matmul weight is stored. `block_size` 0: no per-block scales (per-tensor or float)."""

    bits: int
    block_size: int = 0
    scale_bytes: int = 0
    zero_points: bool = False

    def matrix_bytes(self, rows: int, cols: int) -> int:
        """Bytes of a [rows (out), cols (in)] weight, blocks running along the input dimension (as MatMulNBits)."""
        total = rows * cols * self.bits // 8
        if self.block_size:
            blocks = rows * math.ceil(cols / self.block_size)
            total += blocks * self.scale_bytes
            if self.zero_points:
                total += math.ceil(blocks * self.bits / 8)
        return total


# The formats the backends use by default (the ONNX figures are replaced by the real graph when there is a bundle).
FORMATS = {
    "fp32": WeightFormat(32),
    "fp16": WeightFormat(16),
    "bf16": WeightFormat(16),
    # onnxruntime quantize_dynamic: int8 weights, one scale and zero point per tensor
    "int8": WeightFormat(8),
    # onnxruntime MatMulNBits, onnxruntime-genai builder default: 4-bit, block 32, fp32 scales, symmetric
    "int4": WeightFormat(4, block_size=32, scale_bytes=4),
    # bitsandbytes NF4: 4-bit, block 64, one fp32 absmax per block (without double quantization)
    "nf4": WeightFormat(4, block_size=64, scale_bytes=4),
}

# bytes of the float tensors (lm_head, biases, norms, KV cache) next to each weight format, on CPU builds
FLOAT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 4, "int4": 4, "nf4": 2}


@dataclass
class DecodeBytes:
    """Bytes read by one decode step at `context` tokens of KV cache, by part."""

    matmul_weights: int
    lm_head: int
    vectors: int  # biases and LayerNorm weights
    embedding_row: int
    kv_cache: int
    context: float
    source: str

    @property
    def total(self) -> int:
        return self.matmul_weights + self.lm_head + self.vectors + self.embedding_row + self.kv_cache

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def kv_cache_bytes(text: dict, context: float, element_bytes: int) -> int:
    """Keys + values of every layer for `context` positions (a mean context may be fractional)."""
    head = text["hidden_size"] // text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or text["num_attention_heads"]
    return round(2 * text["num_hidden_layers"] * kv_heads * head * context * element_bytes)


def analytic_decode_bytes(text: dict, precision: str, context: float, weight_format: WeightFormat | None = None,
                          float_bytes: int | None = None, lm_head_format: WeightFormat | None = None) -> DecodeBytes:
    """Bytes per decode step of a Phi decoder with `text` shapes (a preset's "text" dict) stored at `precision`.

    The lm_head stays a float matrix (as the ONNX builders and bitsandbytes' skip list leave it) unless
    `lm_head_format` says otherwise; its bias is counted with the vectors.
    """
    if precision not in FORMATS and weight_format is None:
        raise EdgeVLMError(f"no weight format known for precision {precision!r}: one of {sorted(FORMATS)}")
    fmt = weight_format or FORMATS[precision]
    fbytes = float_bytes or FLOAT_BYTES.get(precision, 4)
    h, inter, layers, vocab = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"], text["vocab_size"]
    head = h // text["num_attention_heads"]
    kv = head * (text.get("num_key_value_heads") or text["num_attention_heads"])
    # per layer: q [h,h], k [kv,h], v [kv,h], dense [h,h], fc1 [inter,h], fc2 [h,inter] (rows = outputs)
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (inter, h), (h, inter)]
    matmuls = layers * sum(fmt.matrix_bytes(r, c) for r, c in shapes)
    head_fmt = lm_head_format or WeightFormat(8 * fbytes)
    lm_head = head_fmt.matrix_bytes(vocab, h)
    # biases of the six matmuls, input LayerNorm (weight + bias) per layer; final LayerNorm; lm_head bias
    vector_count = layers * (h + 2 * kv + h + inter + h + 2 * h) + 2 * h + vocab
    return DecodeBytes(
        matmul_weights=matmuls,
        lm_head=lm_head,
        vectors=vector_count * fbytes,
        embedding_row=h * fbytes,
        kv_cache=kv_cache_bytes(text, context, fbytes),
        context=context,
        source=f"analytic: {precision} weights, {fbytes}-byte floats",
    )


_ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 21: 1, 22: 1}
_MATMUL_OPS = {"MatMul", "MatMulNBits", "MatMulInteger", "Gemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
               "GatherBlockQuantized"}


def onnx_initializer_bytes(path: str | Path) -> tuple[dict[str, int], dict[str, str]]:
    """({initializer: bytes}, {initializer: 'matmul' | 'lm_head'}) of an ONNX graph, from dims and types alone
    (external data is not read). An initializer is a matmul weight (or its scales / zero points) when a matmul-type
    node takes it as a non-first input; 'lm_head' when that node's name says lm_head."""
    from edge_vlm.deps import require

    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    sizes: dict[str, int] = {}
    for tensor in model.graph.initializer:
        itemsize = _ONNX_ITEMSIZE.get(tensor.data_type)
        if itemsize is None:
            raise EdgeVLMError(f"{path}: initializer {tensor.name} has an ONNX type ({tensor.data_type}) not counted")
        count = math.prod(tensor.dims) if tensor.dims else 1
        # 4-bit ONNX types (INT4/UINT4 = 22/21) pack two values per byte
        sizes[tensor.name] = math.ceil(count / 2) if tensor.data_type in (21, 22) else count * itemsize
    roles: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in _MATMUL_OPS:
            for name in node.input[1:]:
                if name in sizes:
                    roles[name] = "lm_head" if "lm_head" in node.name.lower() else "matmul"
    return sizes, roles


def onnx_decode_bytes(decoder_path: str | Path, text: dict, context: float, embedding_row_bytes: int,
                      kv_element_bytes: int) -> DecodeBytes:
    """Bytes per decode step from a decoder graph's real initializers (every weight is read once per step).

    Rotary cos/sin caches are left out: a step reads one row of them, not the table. The lm_head's bias is counted
    with the vectors, as in `analytic_decode_bytes`.
    """
    sizes, roles = onnx_initializer_bytes(decoder_path)
    parts = {"matmul": 0, "lm_head": 0, "vector": 0}
    for name, nbytes in sizes.items():
        lowered = name.lower()
        if "cos_cache" in lowered or "sin_cache" in lowered:
            continue
        parts[roles.get(name, "vector")] += nbytes
    return DecodeBytes(
        matmul_weights=parts["matmul"],
        lm_head=parts["lm_head"],
        vectors=parts["vector"],
        embedding_row=embedding_row_bytes,
        kv_cache=kv_cache_bytes(text, context, kv_element_bytes),
        context=context,
        source=f"onnx initializers of {Path(decoder_path).name}",
    )


def decode_context(prompt_tokens: int, new_tokens: int) -> float:
    """The mean KV length over the decode steps: step i (0-based) attends to prompt + i + 1 positions."""
    return prompt_tokens + (new_tokens + 1) / 2


def roofline(decode: DecodeBytes, bandwidth_gb_s: float | None, tokens_per_s: float | None,
             bandwidth_source: str) -> dict:
    """The bound in tokens/s and the measured speed as a percentage of it."""
    bound = bandwidth_gb_s * 1e9 / decode.total if bandwidth_gb_s else None
    return {
        "bytes_per_token": decode.to_dict(),
        "bandwidth_gb_s": bandwidth_gb_s,
        "bandwidth_source": bandwidth_source,
        "bound_tokens_per_s": bound,
        "percent_of_bound": 100.0 * tokens_per_s / bound if bound and tokens_per_s else None,
    }
