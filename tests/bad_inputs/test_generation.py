"""Decoding and shared flags (seed, threads, device, providers, paths, --image) and `ask -i` stdin: every unusable
value is refused in one line before the model loads."""

from __future__ import annotations

import pytest
from PIL import Image

from edge_vlm.assets import builtin_model_dir


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(path)
    return path


@pytest.mark.parametrize(("flag", "value", "match"), [
    ("--temperature", "nan", "temperature"),
    ("--temperature", "inf", "temperature"),
    ("--temperature", "-0.5", "temperature"),
    ("--top-p", "nan", "top_p"),
    ("--top-p", "0", "top_p"),
    ("--max-new-tokens", "0", "max_new_tokens"),
])
def test_ask_refuses_unusable_decoding_settings(refused, picture, tmp_path, flag, value, match):
    refused("ask", "--model", builtin_model_dir(), "--image", picture, "What colour is the square?", f"{flag}={value}",
            match=match, watch=[tmp_path])


@pytest.mark.parametrize(("argv", "match"), [
    (["ask", "--no-such-flag"], "unrecognized arguments"),
    (["stream", "--source", "synthetic", "--prompt", "p", "--max-frames", "x"], "invalid int value"),
    (["stream", "--source", "synthetic"], "required"),
    (["train", "--config"], "expected one argument"),
    (["no-such-verb"], "invalid choice"),
])
def test_flag_errors_are_one_line_too(refused, argv, match):
    """argparse's own refusals: one line and exit 2 like every other bad input (no usage block)."""
    refused(*argv, match=match)


# ------------------------------------------------------------------ shared flags: seed, threads, device, paths

MODEL = ["--model", builtin_model_dir()]


@pytest.mark.parametrize("value", ["-1", str(2**32), "1.5"])
@pytest.mark.parametrize("verb", [
    ["ask", *MODEL, "What colour?"],
    ["stream", *MODEL, "--source", "synthetic", "--prompt", "What colour?"],
    ["demo", "--out", "-"],
])
def test_seed_outside_numpys_range_is_refused(refused, tmp_path, verb, value):
    refused(*verb, f"--seed={value}", match="--seed", watch=[tmp_path])


def test_seed_range_is_numpys():
    """The bound is numpy's: RandomState takes 2**32-1 and refuses 2**32 and -1."""
    import numpy as np

    from edge_vlm.engine import GenerationConfig
    from edge_vlm.errors import EdgeVLMError

    np.random.RandomState(2**32 - 1)
    GenerationConfig(seed=2**32 - 1)
    for bad in (2**32, -1):
        with pytest.raises(ValueError):
            np.random.RandomState(bad)
        with pytest.raises(EdgeVLMError, match="seed"):
            GenerationConfig(seed=bad)


def _too_many_threads() -> str:
    import os

    return str(os.cpu_count() * 4 + 1)


@pytest.mark.parametrize("value", ["100000", "0", "-3", "many"])
@pytest.mark.parametrize("verb", [
    ["ask", *MODEL, "What colour?"],
    ["stream", *MODEL, "--source", "synthetic", "--prompt", "What colour?"],
    ["eval", *MODEL, "--benchmark", "synth", "--data", "."],
    ["bench", *MODEL],
    ["export", *MODEL, "--out", "never-written"],
    ["demo", "--out", "-"],
])
def test_thread_counts_that_would_hang_or_mean_nothing_are_refused(refused, tmp_path, verb, value):
    refused(*verb, f"--threads={value}", match="--threads", watch=[tmp_path], timeout=60)


def test_thread_bound_is_four_per_core(refused):
    import os

    from edge_vlm.cli.args import thread_count

    assert thread_count(str(os.cpu_count() * 4)) == os.cpu_count() * 4
    refused("ask", *MODEL, "What colour?", "--threads", _too_many_threads(), match=f"1 to {os.cpu_count() * 4}")


@pytest.mark.parametrize(("device", "match"), [
    ("banana", "--device 'banana' is not a torch device"),
    ("cuda:x", "is not a torch device"),
    ("meta", "--device meta"),
])
@pytest.mark.parametrize("verb", [
    ["ask", *MODEL, "What colour?"],
    ["stream", *MODEL, "--source", "synthetic", "--prompt", "What colour?"],
    ["eval", *MODEL, "--benchmark", "synth", "--data", "."],
])
def test_unknown_devices_are_refused(refused, tmp_path, verb, device, match):
    refused(*verb, "--device", device, match=match, watch=[tmp_path])


def test_cuda_without_a_gpu_is_refused(refused):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for device in ("cuda", "cuda:0"):
        refused("ask", *MODEL, "What colour?", "--device", device, match=f"--device {device} was given but torch "
                "sees no CUDA GPU")


# The flags below are refused before a bundle is opened, so any folder stands in for one.
@pytest.mark.parametrize(("argv", "match"), [
    (["ask", "What colour?", "--device", "cpu"], "--device cpu applies to --model only"),
    (["eval", "--benchmark", "synth", "--data", ".", "--device", "cpu"], "--device cpu applies to checkpoints only"),
    (["ask", "What colour?", "--providers", ""], "choose from tensorrt, cuda, cpu"),
    (["ask", "What colour?", "--providers", ","], "choose from tensorrt, cuda, cpu"),
    (["ask", "What colour?", "--providers", "cuda,warp-drive"], "unknown execution provider 'warp-drive'"),
    (["eval", "--benchmark", "synth", "--data", ".", "--providers", ""], "choose from tensorrt, cuda, cpu"),
])
def test_bundle_flags_are_checked(refused, tmp_path, argv, match):
    refused(*argv, "--bundle", tmp_path, match=match, watch=[tmp_path])


def test_providers_with_a_checkpoint_are_refused(refused):
    refused("ask", *MODEL, "What colour?", "--providers", "cpu", match="--providers applies to --bundle only")


@pytest.mark.parametrize("argv", [
    ["ask", "--bundle", "", "What colour?"],
    ["ask", "--model", "", "What colour?"],
    ["ask", "--model", "  ", "What colour?"],
    ["stream", "--bundle", "", "--source", "synthetic", "--prompt", "p"],
    ["eval", "--model", "", "--benchmark", "synth", "--data", "."],
    ["eval", "--compare", builtin_model_dir(), "", "--benchmark", "synth", "--data", "."],
    ["bench", "--bundle", ""],
    ["export", "--model", "", "--out", "never-written"],
    ["export", *MODEL, "--out", ""],
    ["demo", "--model", "", "--out", "-"],
])
def test_empty_folder_paths_are_refused(refused, tmp_path, argv):
    refused(*argv, match="needs a folder path", watch=[tmp_path])


def test_an_empty_image_path_is_refused(refused):
    refused("ask", *MODEL, "--image", "", "What colour?", match="--image: needs a file path")


def test_a_second_image_is_refused(refused, picture, tmp_path):
    other = tmp_path / "other.png"
    Image.new("RGB", (40, 30), (20, 200, 20)).save(other)
    refused("ask", *MODEL, "--image", picture, "--image", other, "What colour?", match="--image was given twice",
            watch=[tmp_path])


# ------------------------------------------------------------------ ask --interactive: hostile stdin


@pytest.fixture
def inductor_cache(tmp_path, monkeypatch):
    """torch creates its compile cache folder under TMPDIR when transformers imports it: not a file edge-vlm left
    behind, so it goes elsewhere for the temp-folder check of runs that load a model."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torchinductor"))

def test_an_endless_stdin_line_is_refused_in_bounded_time(refused, picture, inductor_cache):
    """10 MB with no newline (what `< /dev/zero` sends first): one line, not the whole line in memory."""
    refused("ask", *MODEL, "--image", picture, "-i", stdin=b"\0" * 10_000_000, match="line 1 of stdin is longer "
            "than 64 KiB", timeout=90)


def test_dev_zero_on_stdin_ends(picture):
    """The real thing: a line that never ends is given up on after a bounded skip."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    with open("/dev/zero", "rb") as zero:
        result = subprocess.run([sys.executable, "-m", "edge_vlm.cli.main", "ask", *map(str, MODEL), "--image",
                                 str(picture), "-i"], stdin=zero, capture_output=True, timeout=90)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "stopped reading stdin" in lines[0], result.stderr


def test_a_long_line_is_skipped_and_the_session_goes_on(refused, picture, inductor_cache):
    outcome = refused.run("ask", *MODEL, "--image", picture, "--max-new-tokens", "2", "-i",
                          stdin=b"x" * 200_000 + b"\nWhat colour is the square?\n<image> and this?\n")
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 2, outcome
    assert len(outcome.stdout.strip().splitlines()) == 1, outcome  # the one answerable question was answered
    # each refused line is named once, by its own number (two <image> lines used to read as one error printed twice)
    assert len(lines) == 2 and "line 1 of stdin is longer than 64 KiB" in lines[0], outcome
    assert "line 3 of stdin: the question contains <image>" in lines[1], outcome



def test_a_vanishing_temperature_answers_as_greedy_decoding(refused, picture):
    """`--temperature 5e-324` is a valid number whose limit is greedy decoding; dividing the logits by it overflowed
    to NaN in the PyTorch engine's sampler (a traceback)."""
    argv = ["ask", "--model", builtin_model_dir(), "--image", picture, "--max-new-tokens", "4", "What color is it?"]
    greedy = refused.run(*argv)
    tiny = refused.run(*argv, "--temperature", "5e-324", "--seed", "1")
    assert greedy.code == 0 and tiny.code == 0, tiny.stderr
    assert tiny.stdout == greedy.stdout and "Traceback" not in tiny.stderr
