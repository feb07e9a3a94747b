"""Shared fixtures: tiny random-weight checkpoints built in code, and a subprocess runner for the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    """Hardware-bound tests are skipped with a reason where the hardware or library is absent (never silently)."""
    from edge_vlm.deps import available

    missing = {
        "gpu": None if _has_cuda() else "no CUDA GPU",
        "tensorrt": None if available("tensorrt") else "TensorRT is not installed",
        "ros": None if available("rclpy") else "rclpy (ROS 2) is not installed",
    }
    for item in items:
        for marker, reason in missing.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight checkpoint of the tiny preset (every weight drawn, lm_head bias included)."""
    from edge_vlm.model.factory import write_random_checkpoint

    return write_random_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


def run_cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: str | Path | None = None):
    """Run `edge-vlm ARGS` in a fresh interpreter; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edge_vlm.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd,
    )


@pytest.fixture
def cli():
    return run_cli
