"""The same global batch gives the same losses on 1 process and on 2 processes (torchrun, gloo on CPU), and the
loss of a step is the token mean over the whole global batch (checked against a plain forward of that batch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from edge_vlm.train.loop import train
from edge_vlm.train.records import read_metrics


def run_in_own_session(command: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, str]:
    """Run a command in its own process group; on timeout the whole group (torchrun and its workers) is killed."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, stdout, stderr


def test_two_processes_match_one_process(make_config, tmp_path):
    # 1 process: 4 per device x 2 accumulation; 2 processes: 2 per device x 2 accumulation x 2. Same global batch 8.
    one = make_config(output_dir=str(tmp_path / "one"))
    single = train(one)
    config_file = tmp_path / "two.yaml"
    two = {**one.to_dict(), "per_device_batch_size": 2, "output_dir": str(tmp_path / "two")}
    config_file.write_text(yaml.safe_dump(two))
    code, stdout, stderr = run_in_own_session(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "edge_vlm.cli.main", "train", "--config", str(config_file)], timeout=300)
    assert code == 0, stderr[-3000:]
    assert "2 process(es) x 2 per device x 2 accumulation = global batch 8" in stdout
    losses = [r["loss"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl")]
    assert len(losses) == len(single.losses) == 4
    assert losses == pytest.approx(single.losses, rel=1e-5)
    assert single.losses[-1] < single.losses[0] - 0.1  # it learns, so a wrong split would show


def test_step_loss_is_the_token_mean_of_the_global_batch(make_config, tiny_checkpoint):
    """Reference: transformers' own mean loss over all 8 samples padded into one batch."""
    from edge_vlm.data.dataset import collate
    from edge_vlm.model.checkpoint import load_checkpoint
    from edge_vlm.train.batching import BatchPlan, build_dataset

    config = make_config(max_steps=1, per_device_batch_size=2)  # 4 micro-batches of 2
    result = train(config)
    model, tokenizer, _ = load_checkpoint(tiny_checkpoint)
    dataset = build_dataset(config, tokenizer, model.num_image_tokens, model.config.vision_config.image_size,
                            model.config.text_config.max_position_embeddings, quiet=True)
    plan = BatchPlan(len(dataset), 8, 2, 1, config.seed)
    batch = collate([dataset[i] for i in plan.global_batch_indices(plan.epoch_order(0), 0)], tokenizer.eos_token_id)
    with torch.no_grad():
        reference = model(**batch).loss.item()
    assert result.losses[0] == pytest.approx(reference, rel=1e-5)
