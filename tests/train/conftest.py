"""Fixtures of the training tests: a tiny world in the real data formats and a config builder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.world import write_tiny_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    return write_tiny_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def make_config(tiny_world, tiny_checkpoint, tmp_path):
    """TrainConfig of the tiny model on the tiny world; keyword arguments override."""
    from edge_vlm.train.config import TrainConfig

    def build(**overrides):
        stage = overrides.get("stage", "finetune")
        values = dict(stage=stage, init_from=str(tiny_checkpoint), data_path=str(tiny_world / f"{stage}.json"),
                      global_batch_size=8, per_device_batch_size=4, lr=1e-3, num_epochs=1, output_dir=str(tmp_path / "run"),
                      progress=False, plot=False, num_threads=1)
        values.update(overrides)
        return TrainConfig(**values)

    return build
