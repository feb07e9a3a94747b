"""GPTQ for the ONNX decoder's MatMul weights, calibrated on real decoder inputs, packed as MatMulNBits.

Hand-written (numpy) because ONNX Runtime 1.32's GPTQ (onnxruntime.quantization.neural_compressor.weight_only.gptq)
does not propagate the quantization error: its weights are laid out [in, out], but it applies the reference
algorithm's update with the Hessian factor's column below the diagonal (`Hinv1[i:, i]`, `Hinv[i2:, i1:i2]`), which is
zero for the upper Cholesky factor it builds, so every column is simply rounded and the calibration data has no
effect (two different calibration sets give bit-identical weights; a test here checks ours do not). It also
re-quantizes its result on a grid recomputed from the rounded values, which adds error. This module follows
Frantar et al. 2022 (GPTQ, Algorithm 1) with lazy batch updates, keeps the exact grid each group was quantized on, and
packs it with ONNX Runtime's own MatMulNBits packer (`make_matmul_weight_only_node`).

Scope: the whole decoder is held in memory (the Hessians need its activations), so this is for models whose fp32
decoder fits in RAM next to the calibration activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_vlm.errors import EdgeVLMError


@dataclass
class Quantized:
    codes: np.ndarray  # [K, N] integers in [0, 2**bits)
    scales: np.ndarray  # [K // group, N]
    zeros: np.ndarray | None  # [K // group, N] integers; None: symmetric (MatMulNBits' implicit 2**(bits-1))
    bits: int
    group_size: int

    def dequantize(self) -> np.ndarray:
        """The weights the quantized matrix stands for: (code - zero) * scale, per group of rows."""
        zeros = self.zeros if self.zeros is not None else np.full(self.scales.shape, 2 ** (self.bits - 1))
        expand = lambda a: np.repeat(np.asarray(a, np.float64), self.group_size, axis=0)  # noqa: E731
        return (self.codes - expand(zeros)) * expand(self.scales)


def grid(weights: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-column scale (and zero point) for one group of rows [g, N]: min/max (asymmetric) or max-abs (symmetric)."""
    maxq = 2 ** bits - 1
    if symmetric:
        scale = np.abs(weights).max(axis=0) / (2 ** (bits - 1) - 1)
        return np.where(scale > 0, scale, 1.0), None
    low, high = weights.min(axis=0), weights.max(axis=0)
    scale = (high - low) / maxq
    scale = np.where(scale > 0, scale, 1.0)
    zero = np.clip(np.round(-low / scale), 0, maxq)
    return scale, zero


def _codes(w: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, bits: int) -> np.ndarray:
    maxq = 2 ** bits - 1
    offset = zero if zero is not None else 2 ** (bits - 1)
    return np.clip(np.round(w / scale) + offset, 0, maxq)


def gptq(weight: np.ndarray, hessian: np.ndarray, bits: int = 4, group_size: int = 32, symmetric: bool = False,
         block: int = 128, percdamp: float = 0.01) -> Quantized:
    """Quantize W [K(in), N(out)] with input Hessian H [K, K] (= 2/n X^T X) so that ||X (W - Q)|| stays small.

    Rows (input channels) are quantized in order; each row's rounding error is spread over the rows not yet
    quantized through the inverse Hessian's upper Cholesky factor. The grid of a group is taken from its rows as
    they are when the group starts (after the updates from earlier rows), as in the reference implementation."""
    rows, cols = weight.shape
    if rows % group_size:
        raise EdgeVLMError(f"GPTQ needs the input size ({rows}) to be a multiple of the block size ({group_size})")
    block = max(group_size, block // group_size * group_size)  # a block holds whole groups
    w = np.array(weight, dtype=np.float64)
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h[np.diag_indices(rows)] += percdamp * np.mean(np.diag(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U
    codes = np.zeros((rows, cols))
    scales = np.zeros((rows // group_size, cols))
    zeros = None if symmetric else np.zeros((rows // group_size, cols))
    for start in range(0, rows, block):
        end = min(start + block, rows)
        work = w[start:end].copy()
        errors = np.zeros_like(work)
        factor = upper[start:end, start:end]
        for i in range(end - start):
            row = start + i
            if row % group_size == 0:
                scale, zero = grid(work[i:i + group_size], bits, symmetric)
                scales[row // group_size] = scale
                if zeros is not None:
                    zeros[row // group_size] = zero
            code = _codes(work[i], scale, zero, bits)
            codes[row] = code
            dequantized = (code - (zero if zero is not None else 2 ** (bits - 1))) * scale
            error = (work[i] - dequantized) / factor[i, i]
            work[i:] -= np.outer(factor[i, i:], error)  # row i of U: its effect on the rows still to quantize
            errors[i] = error
        w[end:] -= upper[start:end, end:].T @ errors  # the block's errors onto every later row at once
    return Quantized(codes.astype(np.uint8), scales.astype(weight.dtype),
                     None if zeros is None else zeros.astype(np.uint8), bits, group_size)


def collect_hessians(model, feeds, input_names: list[str]) -> dict[str, np.ndarray]:
    """H = 2/n sum x^T x for each named activation, over every position of every calibration feed."""
    import copy

    import onnx
    import onnxruntime

    augmented = copy.deepcopy(model)
    known = {output.name for output in augmented.graph.output}
    for name in input_names:
        if name not in known:
            augmented.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = onnxruntime.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    del augmented
    sums: dict[str, np.ndarray] = {}
    count = 0
    for feed in feeds:
        outputs = session.run(input_names, feed)
        for name, value in zip(input_names, outputs):
            x = np.asarray(value, dtype=np.float64).reshape(-1, value.shape[-1])
            sums[name] = sums.get(name, 0) + x.T @ x
        count += int(np.prod(outputs[0].shape[:-1]))
    if not count:
        raise EdgeVLMError("GPTQ got no calibration tokens")
    return {name: 2.0 * total / count for name, total in sums.items()}


def gptq_model(model, feeds, bits: int, group_size: int, symmetric: bool, accuracy_level: int | None,
               exclude: set[str], progress=None) -> int:
    """Replace the MatMuls of an in-memory ModelProto (except `exclude`) by GPTQ-quantized MatMulNBits nodes."""
    from onnx import numpy_helper
    from onnxruntime.quantization.neural_compressor.weight_only import make_matmul_weight_only_node

    initializers = {init.name: init for init in model.graph.initializer}
    targets = [node for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in initializers
               and node.name not in exclude]
    hessians = collect_hessians(model, feeds, sorted({node.input[0] for node in targets}))
    replacements, dropped = {}, set()
    for node in progress(targets, desc="GPTQ", unit="matrix") if progress else targets:
        weight = numpy_helper.to_array(initializers[node.input[1]])
        rows, cols = weight.shape
        blocks = rows // group_size
        if not symmetric and blocks % 2:  # ORT's packer puts two 4-bit zero points in a byte per row
            raise EdgeVLMError(f"asymmetric GPTQ needs an even number of {group_size}-blocks per weight row ({node.name}"
                               f" has {blocks}): use --symmetric or another --block-size")
        result = gptq(weight, hessians[node.input[0]], bits, group_size, symmetric)
        # ORT's packer takes [N * blocks, group] codes and [N * blocks, 1] scales / zero points (column-major blocks)
        codes = result.codes.T.reshape(cols * blocks, group_size)
        scales = result.scales.T.reshape(-1, 1)
        zeros = None if result.zeros is None else result.zeros.T.reshape(-1, 1)
        new_node, new_inits = make_matmul_weight_only_node(
            node, (rows, cols), bits, group_size, blocks, codes, scales, zeros, accuracy_level or 0)
        replacements[node.name] = (new_node, new_inits)
        dropped.add(node.input[1])
    nodes = [replacements[n.name][0] if n.name in replacements else n for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [init for init in model.graph.initializer if init.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for _, inits in replacements.values():
        model.graph.initializer.extend(inits)
    return len(replacements)
