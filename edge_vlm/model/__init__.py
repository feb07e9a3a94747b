"""LLaVA-Phi on transformers: presets, the model with Phi-2's biased lm_head, the processor, checkpoints, conversion.

Importing this package imports torch and transformers.
"""

from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint
from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration, build_model, make_config
from edge_vlm.model.presets import PRESETS

__all__ = [
    "PRESETS",
    "LlavaPhiForConditionalGeneration",
    "build_model",
    "load_checkpoint",
    "make_config",
    "save_checkpoint",
]
