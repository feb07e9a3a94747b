"""Files shipped with the package: the built-in model (see builtin/MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path


def builtin_model_dir() -> Path:
    """The built-in checkpoint directory (a small LLaVA-Phi trained on the synthetic world)."""
    return Path(__file__).resolve().parent / "builtin"
