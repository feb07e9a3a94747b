"""Tiny checkpoints and bundles shared by tests/export and tests/runtime, each built once per test session.

The tiny preset has 2 heads of 80 with partial_rotary_factor 0.4 (rotary dim 32), Phi-2's head shape, which ONNX
Runtime's GroupQueryAttention (in the decoder the builder makes) needs; the overrides below keep it so even if the
preset changes.
"""

from __future__ import annotations

from pathlib import Path

from edge_vlm.export.gate import Thresholds

_CACHE: dict[str, Path] = {}

# every export in the tests: few samples, short answers (the gate's machinery, not its statistics)
FAST = {"val_samples": 3, "val_max_new_tokens": 6}
IMPOSSIBLE = Thresholds(0.0, 1.0, 0.0, 0.0, 1.01, 1.0)  # exact match can never reach 101 %


def exportable_checkpoint(base: Path) -> Path:
    """A random-weight tiny checkpoint (every weight drawn, lm_head bias included) the builder can export."""
    if "checkpoint" not in _CACHE:
        from edge_vlm.model.checkpoint import CheckpointMeta, save_checkpoint
        from edge_vlm.model.factory import random_model, small_tokenizer

        tokenizer = small_tokenizer()
        model = random_model("tiny", tokenizer, seed=0, weight_std=0.05, num_attention_heads=2,
                             num_key_value_heads=2)
        meta = CheckpointMeta(random_weights=True, source="tests: tiny preset with 2 heads of 80, seed 0")
        _CACHE["checkpoint"] = save_checkpoint(model, tokenizer, base / "exportable-tiny", meta)
    return _CACHE["checkpoint"]


def bundle(base: Path, precision: str, **options) -> Path:
    """An exported bundle of the exportable checkpoint (one per precision and option set per session)."""
    key = f"{precision}-{sorted(options.items())}"
    if key not in _CACHE:
        from edge_vlm.export.pipeline import ExportOptions, export_bundle

        checkpoint = exportable_checkpoint(base)
        out = base / f"bundle-{precision}-{len(_CACHE)}"
        settings = {**FAST, "allow_degraded": True, **options}
        export_bundle(ExportOptions(model=checkpoint, out=out, precision=precision, **settings), log=lambda _: None)
        _CACHE[key] = out
    return _CACHE[key]
