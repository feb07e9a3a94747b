"""Next-token choice from logits in numpy: greedy, or temperature + nucleus (top-p) sampling with a seedable generator.

Hand-written because the runtime has no torch; it follows transformers' definitions (TemperatureLogitsWarper, then
TopPLogitsWarper: keep the smallest set of most-likely tokens whose probability reaches top_p, always at least one).
"""

from __future__ import annotations

import numpy as np

from edge_vlm.engine import GenerationConfig


class Sampler:
    """Picks tokens for one answer; holds the random generator so a seed gives the same answer again."""

    def __init__(self, config: GenerationConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.config.greedy:
            return int(np.argmax(logits))
        # shift before dividing: a tiny temperature (5e-324) would otherwise overflow to inf - inf = NaN
        probs = top_p_probs((logits - logits.max()) / self.config.temperature, self.config.top_p)
        return int(self.rng.choice(probs.size, p=probs))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits)
    exp = np.exp(shifted)
    return exp / exp.sum()


def top_p_probs(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Probabilities after nucleus filtering, renormalised. top_p 1 keeps every token."""
    probs = softmax(logits)
    if top_p >= 1.0:
        return probs
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    # a token stays if the mass of the tokens before it is still below top_p (so the first one always stays)
    keep_sorted = (cumulative - probs[order]) < top_p
    kept = np.zeros_like(probs)
    kept[order[keep_sorted]] = probs[order[keep_sorted]]
    return kept / kept.sum()
