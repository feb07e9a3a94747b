"""Nucleus sampling and temperature against transformers' own logits warpers (the definitions we follow)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_vlm.engine import GenerationConfig
from edge_vlm.runtime.sampling import Sampler, top_p_probs


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_same_tokens_as_transformers(top_p):
    import torch
    from transformers.generation.logits_process import TopPLogitsWarper

    rng = np.random.default_rng(int(top_p * 1000))
    logits = rng.normal(size=200) * 3
    warped = TopPLogitsWarper(top_p=top_p)(None, torch.tensor(logits)[None])[0].numpy()
    kept_reference = np.isfinite(warped)
    probs = top_p_probs(logits, top_p)
    np.testing.assert_array_equal(probs > 0, kept_reference)
    reference = np.exp(warped[kept_reference] - warped[kept_reference].max())
    np.testing.assert_allclose(probs[kept_reference], reference / reference.sum(), rtol=1e-6)


def test_temperature_scales_logits_like_transformers():
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper

    logits = np.random.default_rng(0).normal(size=50)
    reference = torch.softmax(TemperatureLogitsWarper(0.7)(None, torch.tensor(logits)[None])[0], -1).numpy()
    np.testing.assert_allclose(top_p_probs(logits / 0.7, 1.0), reference, rtol=1e-6)


def test_greedy_is_argmax_and_sampling_follows_the_distribution():
    logits = np.log(np.array([0.1, 0.6, 0.3]))
    assert Sampler(GenerationConfig())(logits) == 1
    sampler = Sampler(GenerationConfig(temperature=1.0, seed=0))
    counts = np.bincount([sampler(logits) for _ in range(6000)], minlength=3) / 6000
    np.testing.assert_allclose(counts, [0.1, 0.6, 0.3], atol=0.03)
    draws = [Sampler(GenerationConfig(temperature=1.0, seed=5))(logits) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same first draw


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-31])
def test_a_vanishing_temperature_picks_the_largest_logit(temperature):
    """Dividing logits by 5e-324 overflows to inf (inf - inf = NaN in the softmax); the limit of T -> 0 is argmax."""
    logits = np.array([1.0, 3.5, -2.0, 3.25])
    sampler = Sampler(GenerationConfig(temperature=temperature, seed=0))
    assert [sampler(logits) for _ in range(5)] == [1] * 5
