"""Training and evaluation that must not turn a damaged input into a result: a run in which every sample was
skipped, a data file of no sample, empty paths in a config, `--resume` with nothing to resume, and a model whose
output is NaN or infinity under `eval`. Each ends with exit 2 and one line (a training run that skipped samples names
each of them first), and writes no checkpoint, scores or answers.

Every input is generated here: the pictures are truncated PNGs, the damaged model is the tiny random checkpoint with
an lm_head of +-3e38 (finite, so it loads; its logits overflow float32 to infinity, as damaged weights would).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

# Importing the model code makes torch create its inductor cache folder in the temp folder; imported here, that
# happens before the harness starts watching the temp folder (see test_configs.py).
import edge_vlm.model.modeling  # noqa: F401

QUESTION = "<image>\nWhat colour is the square?"


# ------------------------------------------------------------------------------------------------------- helpers
def good_png(path: Path) -> Path:
    Image.fromarray(np.full((16, 16, 3), (200, 30, 30), np.uint8)).save(path)
    return path


def truncated_png(path: Path) -> Path:
    """A real PNG cut in half: its signature and header are fine, its pixel data ends early."""
    good_png(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def training_data(root: Path, pictures: str) -> Path:
    """A stage-2 data file with one sample per letter of `pictures`: 'G' a good picture, 'B' a truncated one."""
    (root / "images").mkdir(parents=True)
    records = []
    for index, kind in enumerate(pictures):
        name = f"images/{index}.png"
        (good_png if kind == "G" else truncated_png)(root / name)
        records.append({"id": f"s{index}", "image": name, "conversations": [
            {"from": "human", "value": QUESTION}, {"from": "gpt", "value": "red"}]})
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


def plan(root: Path, **values) -> Path:
    keys = {"stage": "finetune", "data_path": str(root / "data.json"), "output_dir": str(root / "run"),
            "global_batch_size": 2, "per_device_batch_size": 2, "max_steps": 2, "lr": "1.0e-4", "num_threads": 1,
            "num_workers": 0, "save_every_steps": 0, "progress": "false", "plot": "false", **values}
    path = root / "plan.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in keys.items()))
    return path


@pytest.fixture
def model(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny checkpoint, marked as trained so that no 'RANDOM weights' note joins the error."""
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "model"))
    meta = json.loads((folder / "edge_vlm.json").read_text())
    meta["random_weights"] = False
    (folder / "edge_vlm.json").write_text(json.dumps(meta))
    return folder


def overflowing(folder: Path) -> Path:
    """lm_head weights of +-3e38: every weight is finite (the load check passes), every logit overflows."""
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    (name,) = [key for key in tensors if key.endswith("lm_head.weight")]
    signs = torch.randn(tensors[name].shape, generator=torch.Generator().manual_seed(0))
    tensors[name] = torch.copysign(torch.full_like(tensors[name], 3e38), signs)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return folder


@pytest.fixture
def damaged_model(model) -> Path:
    return overflowing(model)


# ------------------------------------------------------------------------------------------------------ training
def test_a_run_in_which_every_picture_is_unreadable_writes_nothing_and_fails(refused, model, tmp_path):
    """on_bad_sample: skip (the default) skips each sample; when that leaves nothing to learn from, the run fails."""
    training_data(tmp_path, "BBBB")
    outcome = refused.run("train", "--config", plan(tmp_path, init_from=model))
    assert "Traceback" not in outcome.stderr and outcome.code == 2, outcome.stderr
    last = outcome.stderr.strip().splitlines()[-1]
    assert last.startswith("edge-vlm train: error: nothing was learned: every sample the run's 2 step(s) drew from "
                           f"{tmp_path / 'data.json'} was skipped"), outcome.stderr
    assert sum(line.startswith("skipped sample") for line in outcome.stderr.splitlines()) == 4
    assert not (tmp_path / "run" / "final").exists()


def test_one_readable_picture_is_enough_to_train(refused, model, tmp_path):
    """The other side of the rule: skipped samples alone do not fail a run that learned from some."""
    training_data(tmp_path, "BGBB")
    outcome = refused.run("train", "--config", plan(tmp_path, init_from=model))
    assert outcome.code == 0, outcome.stderr
    assert sum(line.startswith("skipped sample") for line in outcome.stderr.splitlines()) == 3
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_a_data_file_of_no_sample_is_refused_in_one_line(refused, model, tmp_path):
    (tmp_path / "data.json").write_text("[]")
    # the output folder is proven writable by creating and removing it, which touches tmp_path: watch the inputs
    refused("train", "--config", plan(tmp_path, init_from=model),
            match=f"{tmp_path / 'data.json'} holds no sample: nothing to train on", watch=[model])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "model", "plan.yaml", "tmp"]


@pytest.mark.parametrize("key", ["output_dir", "image_root", "init_from", "tokenizer"])
@pytest.mark.parametrize("value", ["''", "'  '"])
def test_an_empty_path_in_the_config_is_refused(refused, tmp_path, key, value):
    (tmp_path / "data.json").write_text("[]")
    (tmp_path / "ckpt").mkdir()
    values = {"init_from": str(tmp_path / "ckpt"), key: value}
    if key == "tokenizer":  # a tokenizer goes with a preset, not a checkpoint
        values.update(init_from=None, model_preset="tiny")
    path = plan(tmp_path, **{k: v for k, v in values.items() if v is not None})
    refused("train", "--config", path, match=f"{key} is an empty path", watch=[tmp_path])


def test_an_empty_output_dir_on_the_command_line_is_refused(refused, tmp_path):
    (tmp_path / "data.json").write_text("[]")
    (tmp_path / "ckpt").mkdir()
    refused("train", "--config", plan(tmp_path, init_from=tmp_path / "ckpt"), "--output_dir", "",
            match="output_dir is an empty path", watch=[tmp_path])


def test_resume_with_nothing_to_resume_is_refused(refused, tmp_path):
    (tmp_path / "data.json").write_text("[]")
    (tmp_path / "ckpt").mkdir()
    config = plan(tmp_path, init_from=tmp_path / "ckpt")
    refused("train", "--config", config, "--resume", match=f"--resume: nothing to resume in {tmp_path / 'run'}",
            watch=[tmp_path])
    (tmp_path / "run").mkdir()  # a folder that holds something else than a run
    (tmp_path / "run" / "notes.txt").write_text("mine")
    refused("train", "--config", config, "--resume", match="nothing to resume in", watch=[tmp_path])
    (tmp_path / "run" / "final").mkdir()  # a finished run without a checkpoint to go back to
    refused("train", "--config", config, "--resume", match="its run finished (final/ is there", watch=[tmp_path])


# ---------------------------------------------------------------------------------------------------- evaluation
@pytest.fixture
def synth(tmp_path) -> Path:
    """A two-question synthetic-world eval folder (eval.json and its picture)."""
    data = tmp_path / "synth"
    (data / "images").mkdir(parents=True)
    good_png(data / "images" / "a.png")
    records = [{"id": f"q{i}", "image": "images/a.png", "question_type": "color", "answer": "red",
                "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "red"}]}
               for i in range(2)]
    (data / "eval.json").write_text(json.dumps(records))
    return data


def eval_args(synth: Path, out: Path, *source: str) -> list:
    return ["eval", *source, "--benchmark", "synth", "--data", synth, "--no-progress", "--out", out,
            "--max-new-tokens", "2"]


def test_eval_of_a_model_with_non_finite_output_stops_without_a_score(refused, damaged_model, synth, tmp_path):
    refused(*eval_args(synth, tmp_path / "results", "--model", damaged_model),
            match=f"cannot evaluate model:{damaged_model.resolve()}: the model's output holds NaN or infinity",
            watch=[damaged_model, synth])  # not tmp_path: proving --out writable creates and removes a folder there
    assert not (tmp_path / "results").exists()


def test_eval_compare_stops_at_the_damaged_model(refused, model, synth, tmp_path):
    """The first model's results are kept (a rerun resumes them); the damaged one gets no score, no delta."""
    damaged = overflowing(Path(shutil.copytree(model, tmp_path / "broken")))
    out = tmp_path / "results"
    outcome = refused.run(*eval_args(synth, out, "--compare", model, damaged))
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 2 and len(lines) == 1, outcome.stderr
    assert f"cannot evaluate model:{damaged.resolve()}: the model's output holds NaN or infinity" in lines[0]
    assert (out / "model" / "synth" / "scores.json").is_file()
    assert not (out / "broken").exists()
    assert not list(out.glob("comparison*"))


def test_eval_overwrite_with_a_damaged_model_keeps_the_earlier_answers(refused, model, synth, tmp_path):
    """--overwrite replaces earlier answers with new ones: when no new answer comes, the earlier ones stay."""
    out = tmp_path / "results"
    first = refused.run(*eval_args(synth, out, "--model", model))
    assert first.code == 0, first.stderr
    answers = (out / "model" / "synth" / "answers.jsonl").read_bytes()
    overflowing(model)
    refused(*eval_args(synth, out, "--model", model), "--overwrite", match="the model's output holds NaN or infinity",
            watch=[out])
    assert (out / "model" / "synth" / "answers.jsonl").read_bytes() == answers
