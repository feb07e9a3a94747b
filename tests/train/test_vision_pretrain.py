"""Vision-tower pretraining (the plan's vision_pretrain step): labels, what trains, the written start checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_vlm.errors import EdgeVLMError
from edge_vlm.train.vision_pretrain import (
    CHARS,
    COLOR_NAMES,
    KINDS,
    SIZE_NAMES,
    SUMMARY,
    run_vision_pretrain,
    scene_targets,
    summary_targets,
)


def test_scene_targets_by_hand():
    scene = {"shapes": [{"shape": "star", "color": "blue", "size": "large", "slot": "right"},
                        {"shape": "circle", "color": "red", "size": "small", "slot": "top"}],
             "glyph": {"char": "7", "slot": "center"}}
    # slots in the order top, left, center, right, bottom
    kind = [KINDS.index("circle"), 0, KINDS.index("glyph"), KINDS.index("star"), 0]
    color = [COLOR_NAMES.index("red"), 0, 0, COLOR_NAMES.index("blue"), 0]
    size = [SIZE_NAMES.index("small"), 0, 0, SIZE_NAMES.index("large"), 0]
    char = [0, 0, CHARS.index("7"), 0, 0]
    assert scene_targets(scene) == kind + color + size + char
    assert (KINDS[0], COLOR_NAMES[0], SIZE_NAMES[0], CHARS[0]) == ("nothing", "none", "none", "none")


def test_summary_targets_by_hand():
    scene = {"shapes": [{"shape": "star", "color": "blue", "size": "large", "slot": "right"},
                        {"shape": "star", "color": "red", "size": "small", "slot": "top"},
                        {"shape": "cross", "color": "green", "size": "small", "slot": "left"}],
             "glyph": {"char": "7", "slot": "center"}}
    # colours red, green, blue, yellow, purple, orange -> their object's shape ("none" = 0, then the shapes in the
    # order circle, square, triangle, star, cross); then the counts of circle, square, triangle, star, cross
    assert summary_targets(scene) == [4, 5, 4, 0, 0, 0] + [0, 0, 0, 2, 1]
    assert [name for name, _ in SUMMARY][:2] == ["shape_of_red", "shape_of_green"]
    assert len(summary_targets({"shapes": [], "glyph": None})) == len(SUMMARY)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    from edge_vlm.data.synth import write_world

    world = tmp_path_factory.mktemp("vworld") / "world"
    write_world(world, seed=3, train=64, eval_size=7, image_size=56, progress=False)
    return world


def _start_config(world: Path, tmp_path: Path):
    from edge_vlm.train.config import TrainConfig

    return TrainConfig(stage="pretrain", model_preset="tiny", tokenizer_vocab_size=400,
                       tokenizer_corpus=[str(world / "pretrain.json")], data_path=str(world / "pretrain.json"),
                       output_dir=str(tmp_path / "pretrain"), progress=False, num_threads=1)


def test_pretraining_changes_only_the_vision_tower_and_is_reused(small_world, tmp_path):
    import torch

    from edge_vlm.model.checkpoint import load_checkpoint
    from edge_vlm.train.modelsetup import load_start

    start = _start_config(small_world, tmp_path)
    untouched, _, _ = load_start(start, log=lambda *_: None)
    options = {"data_path": str(small_world / "pretrain.json"), "output_dir": str(tmp_path / "vision"),
               "steps": 6, "batch_size": 8, "held_out": 16, "lr": 3e-3}
    final = run_vision_pretrain(options, start, "test")
    trained, tokenizer, meta = load_checkpoint(final)
    before = dict(untouched.named_parameters())
    changed = {name for name, p in trained.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".vision_tower." in f".{name}" for name in changed), sorted(changed)[:5]
    assert any("patch_embedding" in name for name in changed)
    assert "vision tower pretrained" in meta.source
    record = json.loads((tmp_path / "vision" / "vision_pretrain.json").read_text())
    assert set(record["result"]["held_out_accuracy"]) == {"kind", "color", "size", "char"}
    assert "acc_summary" not in json.loads((tmp_path / "vision" / "metrics.jsonl").read_text().splitlines()[0])
    assert len((tmp_path / "vision" / "metrics.jsonl").read_text().splitlines()) == 6
    # a second run with the same settings reuses it; other settings are refused, not silently reused
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    assert run_vision_pretrain(options, start, "test") == final
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(EdgeVLMError, match="other vision_pretrain settings"):
        run_vision_pretrain({**options, "steps": 7}, start, "test")


def test_summary_tokens_are_the_corner_patches():
    from edge_vlm.train.vision_pretrain import summary_token_indices

    assert summary_token_indices("corners", 36) == [0, 5, 30, 35]
    assert summary_token_indices("all", 4) == [0, 1, 2, 3]
    with pytest.raises(EdgeVLMError, match="square grid"):
        summary_token_indices("corners", 12)


def test_summary_head_learns_the_scene_summary_from_each_token(small_world, tmp_path):
    """With `summary_tokens`, each of the chosen image tokens alone must tell the scene summary: the loss falls as it trains and
    its held-out accuracy is reported."""
    start = _start_config(small_world, tmp_path)
    options = {"data_path": str(small_world / "pretrain.json"), "output_dir": str(tmp_path / "vision"),
               "steps": 40, "batch_size": 16, "held_out": 16, "lr": 3e-3, "summary_tokens": "corners"}
    run_vision_pretrain(options, start, "test")
    records = [json.loads(line) for line in (tmp_path / "vision" / "metrics.jsonl").read_text().splitlines()]
    assert "summary" in json.loads((tmp_path / "vision" / "vision_pretrain.json").read_text())["result"][
        "held_out_accuracy"]
    first, last = records[0], records[-1]
    assert last["loss"] < 0.7 * first["loss"], (first, last)
    assert "acc_summary" in last


def test_a_preset_whose_shapes_changed_is_not_reused(small_world, tmp_path, monkeypatch):
    """The start checkpoint holds the whole model: after the preset's shapes change, reusing it would train the old
    shapes without a word."""
    from edge_vlm.model import presets

    start = _start_config(small_world, tmp_path)
    options = {"data_path": str(small_world / "pretrain.json"), "output_dir": str(tmp_path / "vision"),
               "steps": 2, "batch_size": 8, "held_out": 8}
    run_vision_pretrain(options, start, "test")
    deeper = {**presets.PRESETS["tiny"], "text": {**presets.PRESETS["tiny"]["text"], "num_hidden_layers": 3}}
    monkeypatch.setitem(presets.PRESETS, "tiny", deeper)
    with pytest.raises(EdgeVLMError, match="other vision_pretrain settings"):
        run_vision_pretrain(options, start, "test")


def test_a_world_without_scenes_and_bad_keys_are_refused(small_world, tmp_path):
    records = json.loads((small_world / "pretrain.json").read_text())
    for record in records:
        record.pop("scene")
    old = tmp_path / "pretrain.json"
    old.write_text(json.dumps(records))
    (tmp_path / "images").symlink_to(small_world / "images")
    start = _start_config(small_world, tmp_path)
    with pytest.raises(EdgeVLMError, match="has no `scene`"):
        run_vision_pretrain({"data_path": str(old), "output_dir": str(tmp_path / "v")}, start, "plan.yaml")
    with pytest.raises(EdgeVLMError, match="unknown vision_pretrain key"):
        run_vision_pretrain({"data_path": str(old), "output_dir": str(tmp_path / "v"), "step": 3}, start, "plan.yaml")
    with pytest.raises(EdgeVLMError, match="needs"):
        run_vision_pretrain({"output_dir": str(tmp_path / "v")}, start, "plan.yaml")
    with pytest.raises(EdgeVLMError, match="summary_tokens must be one of"):
        run_vision_pretrain({"data_path": str(old), "output_dir": str(tmp_path / "v"), "summary_tokens": "corner"},
                            start, "plan.yaml")


def test_world_scenes_agree_with_their_captions(small_world):
    """The stored scene is what the caption (an independent rendering of the same scene) says is in the picture."""
    from edge_vlm.data.scene import SLOT_PHRASES

    for record in json.loads((small_world / "pretrain.json").read_text()):
        text = record["conversations"][1]["value"].lower()
        scene = record["scene"]
        for item in scene["shapes"]:
            assert f"{item['size']} {item['color']} {item['shape']} {SLOT_PHRASES[item['slot']]}" in text
        if scene["glyph"]:
            assert f"{scene['glyph']['char'].lower()} {SLOT_PHRASES[scene['glyph']['slot']]}" in text
        assert text.count(",") + text.count(" and ") + 1 == len(scene["shapes"]) + bool(scene["glyph"])


def test_plan_step_runs_before_the_first_stage_which_starts_from_it(small_world, tmp_path, capsys):
    import yaml

    from edge_vlm.cli.main import main

    plan = {
        "vision_pretrain": {"data_path": str(small_world / "pretrain.json"), "output_dir": str(tmp_path / "vision"),
                            "steps": 3, "batch_size": 8, "held_out": 8},
        "model_preset": "tiny", "tokenizer_vocab_size": 400, "tokenizer_corpus": [str(small_world / "finetune.json")],
        "num_threads": 1, "progress": False, "plot": False, "global_batch_size": 8, "per_device_batch_size": 8,
        "output_dir": str(tmp_path / "runs"), "trainable": ["projector", "llm", "lm_head"],
        "stages": [{"name": "align", "stage": "pretrain", "data_path": str(small_world / "pretrain.json"),
                    "lr": 1e-3, "max_steps": 2}],
    }
    config_file = tmp_path / "plan.yaml"
    config_file.write_text(yaml.safe_dump(plan))
    assert main(["train", "--config", str(config_file)]) == 0
    assert "[align] 2 steps" in capsys.readouterr().out
    align = yaml.safe_load((tmp_path / "runs" / "align" / "config.yaml").read_text())
    assert align["init_from"] == str(tmp_path / "vision" / "final") and align["model_preset"] is None


def test_a_diverging_vision_pretraining_saves_nothing(small_world, tmp_path):
    from edge_vlm.train.records import read_metrics

    options = {"data_path": str(small_world / "pretrain.json"), "output_dir": str(tmp_path / "vision"),
               "steps": 6, "batch_size": 8, "held_out": 16, "lr": 1e10}
    with pytest.raises(EdgeVLMError, match="vision_pretrain diverged"):
        run_vision_pretrain(options, _start_config(small_world, tmp_path), "test")
    assert not (tmp_path / "vision" / "final").exists()
    records = read_metrics(tmp_path / "vision" / "metrics.jsonl")
    assert records[-1]["event"] == "diverged" and records[-1]["loss"] is None  # NaN / inf written as null
    assert all(isinstance(r["loss"], float) for r in records[:-1])
