"""Metrics JSONL, TensorBoard events (read back with TensorBoard's own reader) and the loss-curve PNG."""

from __future__ import annotations

import pytest
from PIL import Image

from edge_vlm.train.loop import train
from edge_vlm.train.records import read_metrics


def test_run_writes_metrics_tensorboard_and_plot(make_config, tmp_path):
    result = train(make_config(num_epochs=2, tensorboard=True, plot=True, output_dir=str(tmp_path / "run")))
    run = tmp_path / "run"
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    for record in records:
        assert {"loss", "lr", "grad_norm", "samples_per_s", "tokens", "samples", "epoch"} <= set(record)
        assert record["samples_per_s"] > 0 and record["tokens"] > 0
    assert [r["loss"] for r in records] == result.losses
    assert [r["epoch"] for r in records] == [0] * 4 + [1] * 4
    assert sum(r["samples"] for r in records) == 2 * 30  # the tiny world's finetune split, twice

    with Image.open(run / "loss.png") as image:
        assert image.format == "PNG" and image.size[0] > 300

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == list(range(1, 9))
    assert [s.value for s in scalars] == pytest.approx(result.losses, rel=1e-6)
    assert (run / "config.yaml").is_file()
