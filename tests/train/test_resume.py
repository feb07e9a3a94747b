"""A run killed with SIGKILL and resumed gives the same per-step losses and weights as an uninterrupted run."""

from __future__ import annotations

import signal
import sys

import pytest
import yaml
from safetensors.torch import load_file

from edge_vlm.errors import EdgeVLMError
from edge_vlm.train import state
from edge_vlm.train.loop import KILL_ENV, train
from edge_vlm.train.records import read_metrics
from tests.train.test_distributed import run_in_own_session


def test_killed_run_resumes_to_the_same_losses(make_config, tmp_path):
    # 2 epochs x 4 steps; checkpoints every 3 steps; killed after step 5 -> resumes mid-epoch from step 3 and
    # crosses the epoch boundary (new sample order) after the resume.
    kwargs = dict(num_epochs=2, save_every_steps=3, keep_checkpoints=1)
    reference = train(make_config(output_dir=str(tmp_path / "whole"), **kwargs))
    assert reference.steps == 8

    config = make_config(output_dir=str(tmp_path / "killed"), **kwargs)
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    code, _, stderr = run_in_own_session([sys.executable, "-m", "edge_vlm.cli.main", "train", "--config",
                                          str(config_file)], timeout=300, env={KILL_ENV: "5"})
    assert code == -signal.SIGKILL, stderr[-2000:]
    assert [p.name for p in state.list_checkpoints(tmp_path / "killed")] == ["step-0000003"]
    assert len(read_metrics(tmp_path / "killed" / "metrics.jsonl")) == 5  # steps 4 and 5 will run again

    resumed = train(config, resume=True)
    logged = [r["loss"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")]
    assert [r["step"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")] == list(range(1, 9))
    assert logged == reference.losses  # bit-exact: same data order, weights, optimizer and RNG state
    assert resumed.losses == reference.losses
    whole = load_file(str(reference.final_dir / "model.safetensors"))
    again = load_file(str(resumed.final_dir / "model.safetensors"))
    assert all(whole[k].equal(again[k]) for k in whole)


def test_checkpoint_holds_no_pickle(make_config, tmp_path):
    train(make_config(output_dir=str(tmp_path / "run"), num_epochs=2, save_every_steps=2))
    checkpoint = state.latest_checkpoint(tmp_path / "run")
    suffixes = sorted({p.suffix for p in checkpoint.iterdir()})
    assert suffixes == [".json", ".safetensors"]
    loaded = state.load_training_state(checkpoint)
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.98)
    assert loaded["trainer_state"]["global_step"] == 6


def test_resume_refuses_a_changed_config_and_an_existing_run(make_config, tmp_path):
    config = make_config(output_dir=str(tmp_path / "run"), num_epochs=2, save_every_steps=2)
    train(config)
    with pytest.raises(EdgeVLMError, match="already holds a run"):
        train(config)
    changed = make_config(output_dir=str(tmp_path / "run"), num_epochs=2, save_every_steps=2, lr=5e-4)
    with pytest.raises(EdgeVLMError, match=r"the config changed \(lr: 0.001 -> 0.0005\)"):
        train(changed, resume=True)
    with pytest.raises(EdgeVLMError, match="not a training checkpoint"):
        train(config, resume=str(tmp_path))


def test_a_run_skipping_a_broken_picture_resumes_past_it(make_config, tiny_world, tmp_path, monkeypatch, capfd):
    """on_bad_sample: skip -- the broken picture is skipped in both epochs, also by the resumed run, which then
    reproduces the uninterrupted run's losses exactly."""
    import shutil

    from edge_vlm.train import loop

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    picture = world / "images" / "000.png"
    picture.write_bytes(picture.read_bytes()[:60])  # a PNG cut short: its header reads, its pixels do not
    kwargs = dict(data_path=str(world / "finetune.json"), on_bad_sample="skip", num_epochs=2)
    reference = train(make_config(output_dir=str(tmp_path / "whole"), **kwargs))
    assert reference.steps == 8 and "000.png" in capfd.readouterr().err

    steps = {"n": 0}
    real_step = loop._optimizer_step

    def interrupted(*args, **kw):  # Ctrl-C during step 5: the loop saves step 4 and stops
        steps["n"] += 1
        if steps["n"] == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    config = make_config(output_dir=str(tmp_path / "cut"), **kwargs)
    monkeypatch.setattr(loop, "_optimizer_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(loop, "_optimizer_step", real_step)
    assert [p.name for p in state.list_checkpoints(tmp_path / "cut")] == ["step-0000004"]
    capfd.readouterr()
    resumed = train(config, resume=True)  # epoch 2 (steps 5-8) holds the broken picture again
    assert "000.png" in capfd.readouterr().err
    assert resumed.steps == 8 and resumed.losses == reference.losses
