"""Is the CLS attention a better choice of image tokens than a fixed one? PyTorch, the built-in model, K of its 36.

    python benchmarks/tokens/fixed_choices.py 18 runs/builtin/world

Answers the world's held-out split three times with K image tokens: chosen by the CLS attention (edge-vlm's
selection), the same K patches for every picture evenly spaced over the grid, and K random patches (seed 0). The two
fixed choices replace edge_vlm.model.token_selection.select_tokens for the run; nothing else changes.
"""

from __future__ import annotations

import sys
import time

import torch

import edge_vlm.model.token_selection as selection_module
from edge_vlm.eval import evaluate
from edge_vlm.image_tokens import TokenSelection
from edge_vlm.model.engine import TorchEngine

MODEL = "edge_vlm/assets/builtin"


def fixed(indices: list[int]):
    """A select_tokens that keeps the same patches, in order, whatever the picture."""
    def select(patches, scores, keys, selection):
        index = torch.tensor(indices, dtype=torch.long, device=patches.device).expand(patches.shape[0], -1)
        return torch.gather(patches, 1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return select


def main(k: int, world: str) -> None:
    engine = TorchEngine.from_checkpoint(MODEL)
    n = engine.patch_tokens
    choices = {
        "cls-attention": selection_module.select_tokens,
        "evenly spaced": fixed(list(range(0, n, n // k))[:k]),
        "random (seed 0)": fixed(sorted(torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].tolist())),
    }
    for name, choose in choices.items():
        selection_module.select_tokens = choose
        engine = TorchEngine.from_checkpoint(MODEL, token_selection=TokenSelection(k))
        start = time.perf_counter()
        scores = evaluate(engine, "synth", world, progress=False).scores
        print(f"K={k} {name}: accuracy {scores['accuracy']:.2f}, by question type {scores['by_question_type']} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
