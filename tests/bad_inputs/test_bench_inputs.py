"""`bench` refuses what is known before measuring in one line (exit 2) before any backend's worker starts: a prompt
shorter than the image prompt itself, a checkpoint that loading would refuse, and a device or provider this machine
does not have. Every damaged input is generated here."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.export.conftest import export_base, exportable_tiny, int4_bundle  # noqa: F401

QUICK = ["bench", "--quiet", "--new-tokens", "2", "--runs", "1", "--warmup", "0", "--bandwidth-mib", "8"]


@pytest.fixture
def no_worker(monkeypatch):
    """Fail the test if a backend's worker starts: every refusal here comes first."""
    from edge_vlm.bench import runner

    def started(*_args, **_kwargs):
        raise AssertionError("a backend ran before the refusal")

    monkeypatch.setattr(runner, "_run_worker", started)


@pytest.fixture
def checkpoint(exportable_tiny, tmp_path):  # noqa: F811
    return Path(shutil.copytree(exportable_tiny, tmp_path / "checkpoint"))


@pytest.mark.parametrize("source", ["bundle", "model"])
def test_prompt_shorter_than_the_image_prompt(refused, int4_bundle, exportable_tiny, no_worker, source):  # noqa: F811
    given = ["--bundle", int4_bundle] if source == "bundle" else ["--model", exportable_tiny]
    refused(*QUICK, *given, "--prompt-tokens", "3", match="--prompt-tokens 3 is shorter than the image prompt itself",
            watch=[int4_bundle, exportable_tiny])


def test_new_tokens_leave_too_short_a_prompt(refused, int4_bundle, no_worker):  # noqa: F811
    # the tiny model's context is 512: 500 new tokens leave a 12-token prompt, fewer than its 16 image tokens alone
    refused(*QUICK[:2], "--new-tokens", "500", "--runs", "1", "--bundle", int4_bundle,
            match="--prompt-tokens (fitted to the context with --new-tokens 500) 12 is shorter", watch=[int4_bundle])


def test_the_minimum_is_the_workers(refused, int4_bundle, no_worker):  # noqa: F811
    """The up-front minimum is the one the worker's prompt builder needs: one token less is refused, the minimum
    itself builds a prompt of exactly that length (the worker's function, run here on the bundle's tokenizer)."""
    from edge_vlm.bench.workload import prompt_ids
    from edge_vlm.tokenizer import TextTokenizer

    outcome = refused(*QUICK, "--bundle", int4_bundle, "--prompt-tokens", "1", match="use at least")
    least = int(re.search(r"use at least (\d+)", outcome.stderr).group(1))
    tokenizer = TextTokenizer.from_dir(int4_bundle)
    image_tokens = json.loads((int4_bundle / "manifest.json").read_text())["model"]["num_image_tokens"]
    ids, _ = prompt_ids(tokenizer, image_tokens, least)
    assert len(ids) == least and ids.count(tokenizer.image_token_id) == image_tokens
    refused(*QUICK, "--bundle", int4_bundle, "--prompt-tokens", str(least - 1), match=f"use at least {least}")


def _truncate(checkpoint: Path):
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_tensor(checkpoint: Path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(checkpoint / "model.safetensors")
    tensors.pop("lm_head.bias")
    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("damage,match", [
    (_truncate, "model.safetensors: not a complete safetensors file"),
    (_drop_tensor, "1 tensors missing (lm_head.bias)"),
], ids=["truncated", "tensor-missing"])
def test_checkpoint_loading_would_refuse(refused, checkpoint, no_worker, damage, match):
    damage(checkpoint)
    refused(*QUICK, "--model", checkpoint, "--prompt-tokens", "72", match=match, watch=[checkpoint])


def test_cuda_without_onnxruntime_gpu(refused, int4_bundle, no_worker, monkeypatch):  # noqa: F811
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    refused(*QUICK, "--bundle", int4_bundle, "--device", "cuda",
            match="ort-int4 with --device cuda: CUDAExecutionProvider is not available", watch=[int4_bundle])


def test_tensorrt_without_tensorrt(refused, int4_bundle, no_worker, monkeypatch):  # noqa: F811
    from edge_vlm.runtime import providers

    monkeypatch.setattr(providers, "tensorrt_usable", lambda: False)
    refused(*QUICK, "--bundle", int4_bundle, "--backend", "ort-int4+trt",
            match="the tensorrt provider needs the TensorRT Python API", watch=[int4_bundle])


def test_cuda_without_a_gpu_for_torch(refused, exportable_tiny, no_worker, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # torch then sees no GPU, on any machine
    refused(*QUICK, "--model", exportable_tiny, "--device", "cuda", "--prompt-tokens", "72",
            match="--device cuda, but torch sees no CUDA GPU", watch=[exportable_tiny])
