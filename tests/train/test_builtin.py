"""The built-in model: its preset, the shipped files, the demo, and (slow) a short retraining that beats chance."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from edge_vlm.model.presets import count_parameters
from edge_vlm.train.builtin import BUILTIN_PRESET

ASSETS = Path(__file__).resolve().parents[2] / "edge_vlm" / "assets" / "builtin"


def test_preset_fits_the_size_limit_and_the_export_constraints():
    text = BUILTIN_PRESET["text"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    rotary = int(head_dim * text["partial_rotary_factor"])
    assert head_dim * text["partial_rotary_factor"] == rotary and (rotary // 2) % 8 == 0
    counts = count_parameters(BUILTIN_PRESET)
    assert counts["total"] * 4 <= 20 * 2**20  # fp32 safetensors within 20 MB


needs_model = pytest.mark.skipif(not (ASSETS / "model.safetensors").is_file(), reason="built-in model not shipped")


@needs_model
def test_shipped_model_loads_and_is_documented():
    from edge_vlm.model.checkpoint import load_checkpoint

    size = sum(f.stat().st_size for f in ASSETS.iterdir())
    assert size <= 20 * 2**20
    model, tokenizer, meta = load_checkpoint(ASSETS)
    assert not meta.random_weights and meta.template == "phi-2_v0"
    assert model.config.vision_config.image_size == BUILTIN_PRESET["vision"]["image_size"]
    card = (ASSETS / "MODEL_CARD.md").read_text()
    for needed in ("edge-vlm train --config train/configs/builtin.yaml", "seed", "exact match"):
        assert needed in card


@needs_model
def test_demo_answers_with_the_builtin_model(cli, tmp_path):
    result = cli("demo", "--n", "2", "--out", str(tmp_path / "demo.png"), "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "answers right" in result.stdout and (tmp_path / "demo.png").is_file()


@pytest.mark.slow
def test_short_retraining_clearly_beats_the_majority_baseline(tmp_path):
    """A few minutes of the builtin recipe on a small world: exact match well above answering each question type's
    most common answer (the best an image-blind model can do)."""
    from edge_vlm.cli.main import main
    from edge_vlm.data.synth import write_world
    from edge_vlm.train.builtin import evaluate_exact_match

    world = tmp_path / "world"
    write_world(world, seed=5, train=1500, eval_size=140, progress=False)
    plan = tmp_path / "plan.yaml"
    text = (Path(__file__).resolve().parents[2] / "train" / "configs" / "builtin.yaml").read_text()
    text = text.replace("runs/builtin/world", str(world)).replace("runs/builtin", str(tmp_path / "runs"))
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("synth:", "evaluate:")))
    plan.write_text(text)
    assert main(["train", "--config", str(plan), "--set", "pretrain.max_steps=60", "--set", "finetune.max_steps=240",
                 "--progress", "false", "--save_every_steps", "0"]) == 0
    result = evaluate_exact_match(tmp_path / "runs" / "finetune" / "final", world / "eval.json", progress=False)
    records = json.loads((world / "eval.json").read_text())
    by_type: dict[str, Counter] = {}
    for record in records:
        by_type.setdefault(record["question_type"], Counter())[record["answer"]] += 1
    baseline = sum(c.most_common(1)[0][1] for c in by_type.values()) / len(records)
    assert result["overall"] >= baseline + 0.15, (result["per_type"], baseline)


@needs_model
def test_batched_evaluation_answers_as_the_engine_does(tmp_path):
    """evaluate_exact_match batches equal-length prompts through generate(); the engine (KV-cached image prefix,
    one question at a time) is the reference."""
    from edge_vlm.data.formats import read_llava_json
    from edge_vlm.data.synth import write_world
    from edge_vlm.engine import GenerationConfig, answer
    from edge_vlm.model.engine import TorchEngine
    from edge_vlm.train.builtin import evaluate_exact_match

    world = tmp_path / "world"
    write_world(world, seed=11, train=1, eval_size=21, progress=False)
    result = evaluate_exact_match(ASSETS, world / "eval.json", progress=False)
    engine = TorchEngine.from_checkpoint(ASSETS)
    for sample in read_llava_json(world / "eval.json"):
        prepared = engine.prepare_image(world / sample.image)
        said = answer(engine, prepared, sample.turns[0][0], config=GenerationConfig(max_new_tokens=8))
        assert result["answers"][sample.id] == said, sample.id
