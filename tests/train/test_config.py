"""The config: every preset loads and says how to run it; the stage recipes match the paper; overrides; errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_vlm.errors import EdgeVLMError
from edge_vlm.train.config import TrainConfig, load_plan, parse_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))


def test_there_are_presets():
    names = {p.stem for p in PRESETS}
    assert {"sft", "pretrain", "finetune", "pretrain_lp", "finetune_lp", "lora", "qlora"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_its_header_shows_the_command(path):
    plan = load_plan(path)
    assert plan and all(isinstance(c, TrainConfig) for c in plan)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"edge-vlm train --config train/configs/{path.name}" in line for line in header), header


def test_stage_presets_follow_the_paper():
    """Reference §6, the paper's column."""
    sft, = load_plan(CONFIGS / "sft.yaml")
    assert (sft.stage, sft.num_epochs, sft.lr, sft.lr_schedule, sft.template) == ("sft", 2, 3e-5, "linear", "phi-2_v0")
    assert sft.trainable_parts == ("llm", "lm_head")
    pre, = load_plan(CONFIGS / "pretrain.yaml")
    assert (pre.stage, pre.template, pre.lr, pre.global_batch_size, pre.num_epochs) == ("pretrain", "plain", 1e-3, 256, 1)
    assert pre.trainable_parts == ("projector",)
    fin, = load_plan(CONFIGS / "finetune.yaml")
    assert (fin.template, fin.aspect, fin.lr, fin.global_batch_size, fin.num_epochs) == ("phi-2_v0", "pad", 2e-5, 256, 1)
    assert fin.trainable_parts == ("projector", "llm", "lm_head")
    for config in (sft, pre, fin):
        assert (config.betas, config.eps, config.weight_decay) == ((0.9, 0.98), 1e-7, 0.1)
        assert config.lora_r == 0  # full fine-tuning


def test_lp_presets_carry_the_original_codes_choices():
    """Reference §6, the LP scripts' column."""
    pre, = load_plan(CONFIGS / "pretrain_lp.yaml")
    assert pre.trainable_parts == ("projector", "lm_head")
    fin, = load_plan(CONFIGS / "finetune_lp.yaml")
    assert fin.trainable_parts == ("vision_tower", "projector", "llm", "lm_head")
    assert fin.global_batch_size == 128
    for config in (pre, fin):
        assert (config.lr_schedule, config.warmup_ratio, config.weight_decay) == ("cosine", 0.03, 0.0)


def test_cli_overrides_apply_with_types():
    config, = load_plan(CONFIGS / "finetune.yaml", ["--lr", "1e-4", "--output_dir", "runs/x", "--betas", "0.8,0.9",
                                                     "--train_vision_tower", "true", "--max_steps=7"])
    assert config.lr == 1e-4 and isinstance(config.lr, float)
    assert config.output_dir == "runs/x"
    assert config.betas == (0.8, 0.9)
    assert config.train_vision_tower is True
    assert config.max_steps == 7


def test_plan_stages_chain_and_take_per_stage_overrides(tmp_path):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        "model_preset: tiny\ntokenizer_vocab_size: 300\ndata_path: d.json\noutput_dir: runs/p\n"
        "stages:\n  - {name: one, stage: pretrain, lr: 1.0e-3, trainable: [vision_tower, projector]}\n"
        "  - {name: two, stage: finetune, lr: 1.0e-4}\n")
    one, two = load_plan(plan_file, ["--two.lr", "5e-5", "--seed", "3"])
    assert (one.output_dir, two.output_dir) == (str(Path("runs/p/one")), str(Path("runs/p/two")))
    assert one.model_preset == "tiny" and two.model_preset is None
    assert two.init_from == str(Path("runs/p/one/final"))
    assert (one.lr, two.lr, one.seed, two.seed) == (1e-3, 5e-5, 3, 3)
    assert one.trainable_parts == ("vision_tower", "projector")


@pytest.mark.parametrize("values, message", [
    ({"stage": "stage3"}, "stage 'stage3' is not one of"),
    ({"lr": 0}, "lr must be a finite number > 0, got 0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"eps": float("inf")}, "eps must be a finite number > 0, got inf"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"warmup_ratio": 1.0}, r"warmup_ratio must be a number in \[0, 1\)"),
    ({"lora_dropout": float("nan")}, "lora_dropout must be a number in"),
    ({"per_device_batch_size": 0}, "per_device_batch_size must be an integer >= 1, got 0"),
    ({"max_steps": 2.5}, "max_steps must be an integer >= 1, got 2.5"),
    ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\]"),
    ({"warmup_steps": -3}, "warmup_steps must be an integer >= 0"),
    ({"betas": "0.9,abc"}, "betas must be a list of numbers"),
    ({"global_batch_size": 10, "per_device_batch_size": 4}, "not a multiple of per_device_batch_size"),
    ({"trainable": ["projector", "eyes"]}, "trainable 'eyes' is not one of"),
    ({"qlora": True}, "qlora needs LoRA adapters"),
    ({"betas": [0.9, 1.5]}, "betas must be two numbers"),
    ({"init_from": None}, "set init_from"),
    ({"data_path": ""}, "data_path is not set"),
])
def test_bad_values_fail_with_the_key_named(values, message):
    base = dict(init_from="ckpt", data_path="d.json")
    base.update(values)
    with pytest.raises(EdgeVLMError, match=message):
        TrainConfig(**base)


def test_unknown_key_suggests_the_right_one(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("init_from: c\ndata_path: d.json\nlearning_rate: 1.0e-3\n")
    with pytest.raises(EdgeVLMError, match="unknown key 'learning_rate'"):
        load_plan(bad)
    with pytest.raises(EdgeVLMError, match="did you mean 'num_epochs'"):
        load_plan(CONFIGS / "finetune.yaml", ["--num_epoch", "2"])
    with pytest.raises(EdgeVLMError, match="config file not found"):
        load_plan(tmp_path / "missing.yaml")
    with pytest.raises(EdgeVLMError, match="max_steps: 'many' is not a valid int"):
        load_plan(CONFIGS / "finetune.yaml", ["--max_steps", "many"])


def test_global_batch_must_divide_over_processes():
    config = TrainConfig(init_from="c", data_path="d.json", global_batch_size=256, per_device_batch_size=16)
    assert [config.grad_accum_steps(w) for w in (1, 2, 8, 16)] == [16, 8, 2, 1]
    with pytest.raises(EdgeVLMError, match=r"16 x 3 process\(es\) = 48"):
        config.grad_accum_steps(3)


def test_parse_overrides_rejects_stray_words():
    with pytest.raises(EdgeVLMError, match="expected --key value"):
        parse_overrides(["lr", "1"])
    with pytest.raises(EdgeVLMError, match="no stage named 'three'"):
        parse_overrides(["--three.lr", "1"], ["one", "two"])
