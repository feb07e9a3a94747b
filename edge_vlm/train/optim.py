"""AdamW and the learning-rate schedule of a stage (transformers' schedule functions, HF Trainer's decay rule)."""

from __future__ import annotations

import math

import torch
from torch import nn

from edge_vlm.train.config import TrainConfig

# HF Trainer's rule (Trainer.get_decay_parameter_names), which LLaVA's training code inherits: no weight decay on
# biases and normalisation weights. Restated here because that method lives on a Trainer instance.
_NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"layer_norm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def decay_parameter_names(model: nn.Module) -> set[str]:
    from transformers.trainer_pt_utils import get_parameter_names

    return set(get_parameter_names(model, [nn.LayerNorm], list(_NO_DECAY_PATTERNS)))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: two groups, with and without weight decay."""
    decay = decay_parameter_names(model)
    with_decay, without = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (with_decay if name in decay else without).append(param)
    groups = [
        {"params": with_decay, "weight_decay": config.weight_decay},
        {"params": without, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """Explicit warmup_steps, else ceil(total x warmup_ratio) (HF TrainingArguments.get_warmup_steps)."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return math.ceil(total_steps * config.warmup_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """linear: warmup then linear decay to 0; cosine: warmup then half-cosine to 0; constant: warmup then flat."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[config.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps(config, total_steps),
                         num_training_steps=total_steps)
