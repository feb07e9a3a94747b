"""A run whose loss turns NaN / inf stops with exit 2, keeps its last checkpoint, writes no final/, and leaves a
metrics.jsonl that strict JSON readers accept."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from edge_vlm.cli.main import main
from edge_vlm.errors import EdgeVLMError
from edge_vlm.train import state
from edge_vlm.train.records import MetricsLog


def strict_json(line: str):
    """json.loads that refuses NaN / Infinity, as JSON itself (RFC 8259) and most other languages' readers do."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_a_diverging_run_stops_and_keeps_its_last_checkpoint(make_config, tmp_path, capsys):
    # lr 1e10 on the tiny model: step 1 is computed from sane weights, its update blows them up, and the loss of
    # step 2 is NaN (measured: exit 0 and a NaN final/ before divergence was checked).
    config = make_config(output_dir=str(tmp_path / "run"), lr=1e10, lr_schedule="constant", max_steps=8,
                         save_every_steps=1, keep_checkpoints=2)
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["train", "--config", str(plan)]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    err = stderr.strip().splitlines()[-1:]  # the data report may precede it
    assert err[0].startswith("edge-vlm train: error: training diverged at step"), stderr
    run = tmp_path / "run"
    assert not (run / "final").exists()

    records = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    diverged = [r for r in records if r.get("event") == "diverged"]
    assert len(diverged) == 1 and records[-1] is diverged[0]
    step = diverged[0]["step"]
    assert f"at step {step} " in err[0]
    assert diverged[0]["loss"] is None or diverged[0]["grad_norm"] is None  # NaN / inf written as null
    assert all(math.isfinite(r["loss"]) for r in records[:-1])

    # nothing from the diverged step was saved; the newest checkpoint is the step before, and it loads
    last = state.latest_checkpoint(run)
    assert last is not None and str(last) in err[0]
    loaded = state.load_training_state(last)
    assert loaded["trainer_state"]["global_step"] == step - 1
    assert all(torch.isfinite(t).all() for t in loaded["trainable"].values())


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    from accelerate import Accelerator

    from edge_vlm.train.loop import _check_weights

    accelerator = Accelerator(cpu=True)
    layer = torch.nn.Linear(2, 2)
    config = type("Config", (), {"lr": 1.0, "save_every_steps": 0})()
    _check_weights(accelerator, layer, ["weight", "bias"], 3, tmp_path, config)  # finite: no error
    with torch.no_grad():
        layer.bias[1] = float("inf")
    with pytest.raises(EdgeVLMError, match=r"at step 3 \(parameter bias is not finite\).*no checkpoint was saved"):
        _check_weights(accelerator, layer, ["weight", "bias"], 3, tmp_path, config)


def test_metrics_lines_are_strict_json(tmp_path):
    log = MetricsLog(tmp_path, resume_step=None)
    log.log({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3})
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": null, "grad_norm": null, "lr": 0.001}\n'
    # a resume rewrites the kept records: a bare NaN left by an older version becomes null too
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": NaN}\n{"step": 2, "loss": 1.5}\n')
    MetricsLog(tmp_path, resume_step=1).close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": null}\n'
