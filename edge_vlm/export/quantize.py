"""Weight-only quantization of the ONNX decoder to MatMulNBits (INT8 / INT4), one weight in memory at a time.

The decoder is first built in full precision by onnxruntime-genai's builder (written to disk with external data), then
quantized here from that file. Why not the builder's own `-p int4`: it holds the full-precision graph in RAM and
then a quantized copy (~17 GB peak for Phi-2, docs/stack.md), while this pass reads one weight matrix from the external data
file, hands it to ONNX Runtime's own node quantizer (the same `DefaultWeightOnlyQuantizer` / `HQQWeightOnlyQuantizer`
that `MatMulNBitsQuantizer` runs, so the packed weights are identical) and keeps only the quantized result
(export/README.md has the measured figures). GPTQ needs the whole model and calibration inputs, so it goes through
edge_vlm.export.gptq, a whole-model pass (ONNX Runtime's own GPTQ ignores its calibration data; see there).

Methods: 'rtn' (round to nearest per block: ORT's default algorithm, no data), 'hqq' (half-quadratic optimisation of
scales and zero points, no data; always asymmetric), 'gptq' (Hessian-aware, needs calibration inputs).
The lm_head is quantized to 8 bits when the body is 4-bit (`lm_head_bits`): it is the most output-sensitive matrix
(llama.cpp and the builder's `rtn_last` do the same).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_vlm.errors import EdgeVLMError

METHODS = ("rtn", "hqq", "gptq")
LM_HEAD_NODE = "/lm_head/MatMul"
DATA_SUFFIX = ".data"


@dataclass
class QuantSettings:
    bits: int = 4
    block_size: int = 32
    symmetric: bool | None = None  # None: the method's default (RTN symmetric; GPTQ and HQQ asymmetric)
    method: str = "rtn"
    accuracy_level: int | None = None  # MatMulNBits compute type: 4 = int8 activations (fast on CPU), None = default
    lm_head_bits: int | None = 8  # None: lm_head gets `bits` too

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise EdgeVLMError(f"quantization bits must be 4 or 8, got {self.bits}")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise EdgeVLMError(f"--block-size must be one of 16, 32, 64, 128, 256 (got {self.block_size})")
        if self.method not in METHODS:
            raise EdgeVLMError(f"quantization method {self.method!r} is not one of {METHODS}")
        if self.method == "hqq" and self.symmetric:
            raise EdgeVLMError("HQQ optimises a zero point per block: it is asymmetric by construction (drop --symmetric)")
        if self.symmetric is None:
            # a zero point per block fits the rows GPTQ has shifted by error feedback better than a symmetric grid
            self.symmetric = self.method == "rtn"
        if self.lm_head_bits is not None and self.lm_head_bits not in (4, 8):
            raise EdgeVLMError(f"lm_head bits must be 4 or 8, got {self.lm_head_bits}")

    def bits_for(self, node_name: str) -> int:
        if node_name == LM_HEAD_NODE and self.lm_head_bits is not None:
            return max(self.bits, self.lm_head_bits)
        return self.bits

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lm_head_bits"] = self.bits_for(LM_HEAD_NODE)
        return data


def _node_quantizer(settings: QuantSettings, bits: int, method: str):
    """ONNX Runtime's quantizer for one MatMul node (RTN: DefaultWeightOnlyQuantizer; HQQ: HQQWeightOnlyQuantizer)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    if method == "hqq":
        return mnq.HQQWeightOnlyQuantizer(mnq.HQQWeightOnlyQuantConfig(block_size=settings.block_size, bits=bits))
    config = mnq.DefaultWeightOnlyQuantConfig(
        block_size=settings.block_size, is_symmetric=settings.symmetric, accuracy_level=settings.accuracy_level,
        bits=bits,
    )
    return mnq.DefaultWeightOnlyQuantizer(config)


def quantize_decoder(source: Path, target: Path, settings: QuantSettings, calibration=None, progress=None) -> dict:
    """Quantize the MatMul weights of `source` (an ONNX file with external data) into `target` (same layout).

    `calibration`: an iterable of decoder input dicts (edge_vlm.export.calibration), required for 'gptq'.
    Returns a summary: quantized node count and bits per node kind.
    """
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if settings.method == "gptq":
        if calibration is None:
            raise EdgeVLMError("GPTQ needs calibration data: pass --calibration DATA (LLaVA-format JSON)")
        staged = target.with_name(target.stem + ".gptq.onnx")
        _gptq_body(source, staged, settings, calibration, progress)
        # the lm_head was left in full precision by GPTQ; round it to nearest at its own bit width
        summary = _quantize_per_node(staged, target, settings, only={LM_HEAD_NODE}, method="rtn", progress=progress)
        for leftover in (staged, staged.with_name(staged.name + DATA_SUFFIX)):
            leftover.unlink(missing_ok=True)
        summary["gptq"] = True
        return summary
    return _quantize_per_node(source, target, settings, progress=progress)


def _quantize_per_node(source: Path, target: Path, settings: QuantSettings, only: set[str] | None = None,
                       method: str | None = None, progress=None) -> dict:
    import onnx
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    model = onnx.load(str(source), load_external_data=False)  # structure only: weights stay on disk
    graph = model.graph
    base_dir = str(source.parent)
    initializers = {init.name: init for init in graph.initializer}
    body_method = method or settings.method
    quantizers: dict[tuple[str, int], object] = {}
    targets = [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in initializers
               and (only is None or node.name in only)]
    new_nodes, replaced, bits_used = [], set(), {}
    iterator = progress(targets, desc="quantizing", unit="matrix") if progress else targets
    done = {id(node) for node in targets}
    by_id = {}
    for node in iterator:
        bits = settings.bits_for(node.name)
        # the lm_head is always rounded to nearest: HQQ's float zero points have no 8-bit CPU kernel, and GPTQ
        # leaves it out (it is calibrated on hidden states the body's quantization has already shifted)
        node_method = "rtn" if node.name == LM_HEAD_NODE else body_method
        if (node_method, bits) not in quantizers:
            quantizers[(node_method, bits)] = _node_quantizer(settings, bits, node_method)
        weight = TensorProto()
        weight.CopyFrom(initializers[node.input[1]])
        if uses_external_data(weight):
            load_external_data_for_tensor(weight, base_dir)
            weight.data_location = TensorProto.DEFAULT
            del weight.external_data[:]
        scratch = onnx.helper.make_graph([], "scratch", [], [], initializer=[weight])
        _quiet_ort_quantizer()
        with warnings.catch_warnings():  # ORT's HQQ hands torch a read-only numpy view (harmless: it only reads it)
            warnings.simplefilter("ignore", UserWarning)
            quantized = quantizers[(node_method, bits)].quantize(node, [scratch])
        # copies, not references: a protobuf sub-message keeps its whole parent alive, and the scratch graph still
        # holds the full-precision weight (keeping references cost one fp32 copy of the decoder in RAM)
        new_inits = []
        for init in scratch.initializer[1:]:
            copy = TensorProto()
            copy.CopyFrom(init)
            new_inits.append(copy)
        by_id[id(node)] = (quantized, new_inits)
        replaced.add(node.input[1])
        bits_used[node.name] = bits
        del weight, scratch
    for node in graph.node:
        if id(node) in done:
            quantized_nodes, new_inits = by_id[id(node)]
            new_nodes.extend(quantized_nodes)
            graph.initializer.extend(new_inits)
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [init for init in graph.initializer if init.name not in replaced]
    for init in kept:  # the small tensors left in full precision (biases, norms): read them before rewriting
        if uses_external_data(init):
            load_external_data_for_tensor(init, base_dir)
            init.data_location = TensorProto.DEFAULT
            del init.external_data[:]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    _save_quantized(model, target)
    counts: dict[str, int] = {}
    for bits in bits_used.values():
        counts[f"int{bits}"] = counts.get(f"int{bits}", 0) + 1
    return {"quantized_matmuls": len(bits_used), "by_bits": counts, "method": body_method}


def _gptq_body(source: Path, target: Path, settings: QuantSettings, calibration, progress=None) -> None:
    """GPTQ (edge_vlm.export.gptq) over every MatMul but the lm_head; the whole decoder is loaded in memory."""
    import onnx

    from edge_vlm.export.gptq import gptq_model

    model = onnx.load(str(source))
    gptq_model(model, calibration, settings.bits, settings.block_size, settings.symmetric, settings.accuracy_level,
               exclude={LM_HEAD_NODE}, progress=progress)
    _save_quantized(model, target)


def _save_quantized(model, target: Path) -> None:
    """Write a decoder holding MatMulNBits (a com.microsoft op) with its weights in one external data file."""
    import onnx

    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    data_name = target.name + DATA_SUFFIX
    (target.parent / data_name).unlink(missing_ok=True)
    onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)


def _quiet_ort_quantizer() -> None:
    # ORT's quantizer logs one INFO line per node; our progress bar already says where it is
    for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(logging.WARNING)
