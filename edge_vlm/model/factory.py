"""Random-weight checkpoints of any preset, with a small tokenizer trained offline.

No real weights can be downloaded on the project's machines, so tests, placeholders and full-size benchmarks
build their own. Every checkpoint made here is marked `random_weights` in edge_vlm.json, and every command that
loads one says so: random-weight output is never model quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edge_vlm.model.checkpoint import CheckpointMeta, save_checkpoint
from edge_vlm.model.modeling import build_model, make_config
from edge_vlm.prompting import PHI2_SYSTEM
from edge_vlm.tokenizer import TextTokenizer, train_bpe_tokenizer

_CORPUS = [
    PHI2_SYSTEM,
    "USER: ASSISTANT: What is in the image? Describe the picture. How many objects are there? Is there a red circle?",
    "Yes. No. There is a blue square on the left and a green triangle on the right. The answer is A.",
    "Answer the question using a single word or phrase. Answer with the option's letter from the given choices directly.",
    "red green blue yellow purple orange white black circle square triangle star small large top bottom left right",
    "zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
]


def small_tokenizer(vocab_size: int = 1024) -> TextTokenizer:
    """A byte-level BPE trained on a few lines of template text (deterministic)."""
    return train_bpe_tokenizer(_CORPUS * 4, vocab_size=vocab_size)


def random_model(preset: str, tokenizer: TextTokenizer, seed: int = 0, weight_std: float | None = None,
                 **text_overrides):
    """A model of `preset` fitted to `tokenizer` (image token id). With `weight_std`, every parameter (biases and
    LayerNorms included) is drawn from N(0, std) so that tests exercise every weight, the lm_head bias too."""
    vocab = text_overrides.pop("vocab_size", None)
    if vocab is None and preset == "tiny":
        # The tiny preset is fitted to its tokenizer so that every sampled id decodes; other presets keep exact shapes.
        vocab = len(tokenizer)
    config = make_config(preset, image_token_id=tokenizer.image_token_id, vocab_size=vocab, **text_overrides)
    if config.text_config.vocab_size < len(tokenizer):
        raise ValueError(f"preset vocabulary {config.text_config.vocab_size} < tokenizer size {len(tokenizer)}")
    model = build_model(config, seed=seed)
    if weight_std is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * weight_std)
    return model


def write_random_checkpoint(preset: str, directory: str | Path, seed: int = 0, weight_std: float | None = 0.05,
                            force: bool = True) -> Path:
    """Save a random-weight checkpoint of `preset` (labelled as such) and return its path."""
    tokenizer = small_tokenizer()
    model = random_model(preset, tokenizer, seed=seed, weight_std=weight_std)
    meta = CheckpointMeta(random_weights=True, source=f"random weights, preset {preset}, seed {seed}")
    return save_checkpoint(model, tokenizer, directory, meta, force=force)
