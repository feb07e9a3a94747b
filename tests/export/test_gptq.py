"""GPTQ's core against its definition: with no cross-channel correlation it is round-to-nearest on the group grid;
with correlated inputs it lowers the layer objective ||X (W - Q)||^2 well below round-to-nearest on the same grid."""

from __future__ import annotations

import numpy as np
import pytest

from edge_vlm.export.gptq import gptq, grid


def _rtn(weight, bits, group, symmetric):
    """Plain round-to-nearest on the same per-group grid, written out from the formulas."""
    out = np.empty_like(weight, dtype=np.float64)
    for start in range(0, weight.shape[0], group):
        rows = weight[start:start + group]
        scale, zero = grid(rows, bits, symmetric)
        offset = zero if zero is not None else 2 ** (bits - 1)
        codes = np.clip(np.round(rows / scale) + offset, 0, 2 ** bits - 1)
        out[start:start + group] = (codes - offset) * scale
    return out


@pytest.mark.parametrize("symmetric", [False, True])
def test_diagonal_hessian_is_round_to_nearest(symmetric):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 24)).astype(np.float32)
    result = gptq(weight, np.diag(rng.uniform(0.5, 2, 64)), bits=4, group_size=16, symmetric=symmetric)
    np.testing.assert_allclose(result.dequantize(), _rtn(weight.astype(np.float64), 4, 16, symmetric), atol=1e-6)
    assert result.codes.max() <= 15 and (result.zeros is None) == symmetric


@pytest.mark.parametrize("symmetric", [False, True])
def test_correlated_inputs_lower_the_layer_error(symmetric):
    rng = np.random.default_rng(1)
    k, n, tokens = 64, 32, 2000
    mixing = rng.normal(size=(k, k)) * 0.3 + np.eye(k)
    x = rng.normal(size=(tokens, k)) @ mixing  # correlated input channels, as real activations are
    weight = rng.normal(size=(k, n)).astype(np.float32)
    hessian = 2 * x.T @ x / tokens
    result = gptq(weight, hessian, bits=4, group_size=16, symmetric=symmetric)

    def layer_error(q):
        return float(np.sum((x @ (weight - q)) ** 2))

    assert layer_error(result.dequantize()) < 0.7 * layer_error(_rtn(weight.astype(np.float64), 4, 16, symmetric))


def test_input_size_must_fit_the_block():
    from edge_vlm.errors import EdgeVLMError

    with pytest.raises(EdgeVLMError, match="multiple of the block size"):
        gptq(np.zeros((40, 4), np.float32), np.eye(40), group_size=32)
