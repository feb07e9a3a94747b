"""The built-in model: its preset, the shipped files, the demo, and (slow) a short retraining whose captions depend on
the pictures."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_vlm.model.presets import BUILTIN_PRESET, count_parameters

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
def test_the_recipe_makes_the_pictures_matter(tmp_path):
    """The first built-in model stayed image-blind: its loss did not change when its images were shuffled. The
    recipe's vision pretraining is what fixed that. After a short run of it and of stage 1 on a small world, the
    captions' loss with the right pictures must be far below the loss with the pictures shuffled between samples.
    The blind model had both at ~0.65 per token."""
    import torch

    from edge_vlm.cli.main import main
    from edge_vlm.data.dataset import SupervisedDataset, collate
    from edge_vlm.data.formats import read_llava_json
    from edge_vlm.data.synth import write_world
    from edge_vlm.imaging import ImageConfig
    from edge_vlm.model.checkpoint import load_checkpoint

    world = tmp_path / "world"
    write_world(world, seed=5, train=1500, eval_size=7, progress=False)
    plan = tmp_path / "plan.yaml"
    text = (Path(__file__).resolve().parents[2] / "train" / "configs" / "builtin.yaml").read_text()
    text = text.replace("runs/builtin/world", str(world)).replace("runs/builtin", str(tmp_path / "runs"))
    text = text.replace("steps: 500,", "steps: 200,")
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("synth:", "evaluate:")))
    plan.write_text(text)
    assert main(["train", "--config", str(plan), "--set", "pretrain.max_steps=150", "--set", "finetune.max_steps=1",
                 "--progress", "false", "--save_every_steps", "0"]) == 0
    model, tokenizer, _ = load_checkpoint(tmp_path / "runs" / "pretrain" / "final")
    held_out = tmp_path / "held_out"  # pictures and captions of another seed: never seen in training
    write_world(held_out, seed=6, train=64, eval_size=0, progress=False)
    samples = read_llava_json(held_out / "pretrain.json")
    dataset = SupervisedDataset(samples, tokenizer, "pretrain", held_out,
                                ImageConfig(image_size=model.config.vision_config.image_size, aspect="square"),
                                model.num_image_tokens, 512)
    batch = collate([dataset[i] for i in range(len(dataset))], tokenizer.eos_token_id)
    with torch.no_grad():
        right = model(**batch).loss.item()
        shuffled = model(**{**batch, "pixel_values": batch["pixel_values"].roll(1, dims=0)}).loss.item()
    assert shuffled > 2 * right and right < 0.6, (right, shuffled)  # measured here: 0.43 vs 1.29


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


def test_a_plan_refuses_a_world_written_with_other_settings(tmp_path):
    """ensure_world reuses a world only when it was written with the same settings, the teaching aids included."""
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.train.builtin import ensure_world

    out = tmp_path / "world"
    ensure_world(out, seed=3, train=4, eval_size=7, image_size=64, progress=False)
    before = (out / "finetune.json").read_bytes()
    assert ensure_world(out, seed=3, train=4, eval_size=7, image_size=64) == out
    assert (out / "finetune.json").read_bytes() == before
    for other in ({"seed": 4}, {"extra_questions": 2}, {"caption_counts": True}, {"train": 5}):
        settings = {"seed": 3, "train": 4, "eval_size": 7, "image_size": 64, **other}
        with pytest.raises(EdgeVLMError, match="another synthetic world"):
            ensure_world(out, **settings)
