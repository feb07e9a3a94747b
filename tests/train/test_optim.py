"""Optimizer settings and learning-rate schedules against the paper's numbers and the schedule formulas."""

from __future__ import annotations

import math

import pytest
import torch

from edge_vlm.train.config import TrainConfig, load_plan
from edge_vlm.train.optim import build_optimizer, build_scheduler, warmup_steps
from tests.train.test_config import CONFIGS


def _model():
    from edge_vlm.model.factory import random_model, small_tokenizer

    tokenizer = small_tokenizer()
    return random_model("tiny", tokenizer, vocab_size=len(tokenizer))


def _lrs(config: TrainConfig, total: int) -> list[float]:
    """The lr used at each of `total` optimizer steps."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, total)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("preset", ["sft", "pretrain", "finetune"])
def test_adamw_has_the_papers_settings(preset):
    config, = load_plan(CONFIGS / f"{preset}.yaml")
    optimizer = build_optimizer(_model(), config)
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.98)
        assert group["eps"] == 1e-7
        assert group["lr"] == config.lr
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.1]


def test_no_weight_decay_on_biases_and_layernorms():
    model = _model()
    config = TrainConfig(init_from="c", data_path="d.json")
    optimizer = build_optimizer(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed and plain and not decayed & plain
    assert decayed | plain == set(names.values())
    modules = dict(model.named_modules())
    for name in decayed:
        module = modules[name.rsplit(".", 1)[0]]
        assert not name.endswith("bias") and not isinstance(module, torch.nn.LayerNorm), name
    for name in plain:
        module = modules[name.rsplit(".", 1)[0]]
        assert name.endswith("bias") or isinstance(module, torch.nn.LayerNorm), name
    assert "lm_head.weight" in decayed and "model.language_model.embed_tokens.weight" in decayed


def test_only_trainable_parameters_reach_the_optimizer():
    model = _model()
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("model.multi_modal_projector."))
    optimizer = build_optimizer(model, TrainConfig(init_from="c", data_path="d.json"))
    count = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert count == sum(p.numel() for p in model.model.multi_modal_projector.parameters())


def test_linear_decay_without_warmup_matches_the_formula():
    config = TrainConfig(init_from="c", data_path="d.json", lr=3e-5, lr_schedule="linear")
    total = 20
    expected = [3e-5 * (total - t) / total for t in range(total)]
    assert _lrs(config, total) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_cosine_with_3_percent_warmup_matches_the_formula():
    config = TrainConfig(init_from="c", data_path="d.json", lr=2e-5, lr_schedule="cosine", warmup_ratio=0.03)
    total = 200
    warm = math.ceil(0.03 * total)
    assert warmup_steps(config, total) == warm == 6
    expected = []
    for t in range(total):
        if t < warm:
            expected.append(2e-5 * t / warm)
        else:
            progress = (t - warm) / (total - warm)
            expected.append(2e-5 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert _lrs(config, total) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_linear_with_warmup_and_explicit_warmup_steps():
    config = TrainConfig(init_from="c", data_path="d.json", lr=1e-3, lr_schedule="linear", warmup_steps=4)
    total = 10
    expected = [1e-3 * t / 4 if t < 4 else 1e-3 * (total - t) / (total - 4) for t in range(total)]
    assert _lrs(config, total) == pytest.approx(expected, rel=1e-12, abs=1e-18)
