"""`edge-vlm train`: help, one-line errors, and a two-stage plan from scratch (tokenizer trained on the data)."""

from __future__ import annotations

import json

import yaml

from edge_vlm.cli.main import main


def test_help_lists_the_config_keys(cli):
    result = cli("train", "--help")
    assert result.returncode == 0
    for key in ("--config", "--resume", "--merge", "--lr", "--global_batch_size", "--lora_r", "--output_dir"):
        assert key in result.stdout


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("init_from: c\ndata_path: d.json\nglobal_batch_size: 10\nper_device_batch_size: 4\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a multiple of per_device_batch_size" in err
    assert main(["train", "--config", str(bad), "--set", "lr=1"]) == 2
    assert "expected STAGE.KEY=VALUE" in capsys.readouterr().err


def test_plan_from_scratch_runs_its_stages_in_sequence(tiny_world, tmp_path, capsys):
    plan = {
        "model_preset": "tiny", "tokenizer_vocab_size": 320, "seed": 1, "num_threads": 1, "progress": False,
        "plot": False, "global_batch_size": 8, "per_device_batch_size": 8, "output_dir": str(tmp_path / "runs"),
        "tokenizer_corpus": [str(tiny_world / "pretrain.json"), str(tiny_world / "finetune.json")],
        "stages": [
            {"name": "align", "stage": "pretrain", "data_path": str(tiny_world / "pretrain.json"), "lr": 1e-3,
             "trainable": ["vision_tower", "projector", "llm", "lm_head"]},
            {"name": "chat", "stage": "finetune", "data_path": str(tiny_world / "finetune.json"), "lr": 1e-3},
        ],
    }
    config_file = tmp_path / "plan.yaml"
    config_file.write_text(yaml.safe_dump(plan))
    assert main(["train", "--config", str(config_file), "--max_steps", "2", "--set", "chat.lr=5e-4"]) == 0
    out = capsys.readouterr().out
    assert "[align] 2 steps" in out and "[chat] 2 steps" in out
    chat = yaml.safe_load((tmp_path / "runs" / "chat" / "config.yaml").read_text())
    assert chat["init_from"] == str(tmp_path / "runs" / "align" / "final") and chat["lr"] == 5e-4
    meta = json.loads((tmp_path / "runs" / "chat" / "final" / "edge_vlm.json").read_text())
    assert meta["template"] == "phi-2_v0" and meta["image"]["aspect"] == "pad" and not meta["random_weights"]
    align_meta = json.loads((tmp_path / "runs" / "align" / "final" / "edge_vlm.json").read_text())
    assert align_meta["template"] == "plain" and align_meta["image"]["aspect"] == "square"
    # --resume skips finished stages
    assert main(["train", "--config", str(config_file), "--max_steps", "2", "--set", "chat.lr=5e-4",
                 "--resume"]) == 0
    assert "done earlier" in capsys.readouterr().out
