"""The CLI as a user meets it: answers stream, bad input gives one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edge_vlm.model.presets import LLAVA_PHI_2, count_parameters


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    good = root / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(good)
    (root / "truncated.png").write_bytes(good.read_bytes()[:150])
    (root / "corrupt.jpg").write_bytes(b"this is not a jpeg" * 20)
    (root / "no_config").mkdir()
    return root


def test_info_preset_prints_exact_counts(cli):
    result = cli("info", "--preset", "llava-phi-2")
    assert result.returncode == 0, result.stderr
    counts = count_parameters(LLAVA_PHI_2)
    for part in ("vision", "projector", "llm", "total"):
        assert f"{counts[part]:,}" in result.stdout


def test_ask_streams_an_answer_and_labels_random_weights(cli, tiny_checkpoint, image_files):
    result = cli("ask", "--model", str(tiny_checkpoint), "--image", str(image_files / "good.png"), "What is it?",
                 "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stderr
    assert result.stdout.endswith("\n")


def _bad(cli, *args, expect: str):
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert expect in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_inputs_give_one_line_errors(cli, tiny_checkpoint, image_files, tmp_path):
    good = str(image_files / "good.png")
    _bad(cli, "ask", "--model", str(tmp_path / "nope"), "--image", good, "q", expect="not found")
    _bad(cli, "ask", "--model", str(image_files / "no_config"), "--image", good, "q", expect="no config.json")
    _bad(cli, "ask", "--model", str(tiny_checkpoint), "--image", str(image_files / "truncated.png"), "q",
         expect="truncated")
    _bad(cli, "ask", "--model", str(tiny_checkpoint), "--image", str(image_files / "corrupt.jpg"), "q",
         expect="cannot read image")
    _bad(cli, "ask", "--model", str(tiny_checkpoint), "--image", str(image_files), "q", expect="directory")
    _bad(cli, "ask", "--model", str(tiny_checkpoint), "--image", good, "   ", expect="empty")
    _bad(cli, "info", "--preset", "phi-9", expect="unknown preset")
    _bad(cli, "info", str(tmp_path / "nothing"), expect="not found")


def test_prompt_longer_than_the_context_is_refused(cli, tiny_checkpoint, image_files):
    long_question = "word " * 700  # the tiny preset's context is 512 tokens
    result = cli("ask", "--model", str(tiny_checkpoint), "--image", str(image_files / "good.png"), long_question)
    assert result.returncode == 2 and "context" in result.stderr and "Traceback" not in result.stderr


def test_a_closed_pipe_is_not_an_error():
    import subprocess
    import sys

    command = f"'{sys.executable}' -m edge_vlm.cli.main info --preset llava-phi-2 | head -c 1"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def _help(capsys, *verb: str) -> str:
    from edge_vlm.cli.main import main

    with pytest.raises(SystemExit):
        main([*verb, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_the_documented_size_bounds_are_the_enforced_ones(capsys):
    """--help states the bounds of stream --size, data synth --image-size and demo --n; the code enforces its own
    constants: they must be the same numbers."""
    from edge_vlm.cli import demo, stream
    from edge_vlm.data.synth import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from edge_vlm.stream.file_sources import MAX_SYNTHETIC_SIDE

    assert stream.MAX_SIDE == MAX_SYNTHETIC_SIDE
    assert f"{stream.MIN_SIDE} to {MAX_SYNTHETIC_SIDE} pixels a side" in _help(capsys, "stream")
    assert f"picture side in pixels, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}" in _help(capsys, "data", "synth")
    assert f"pictures to draw, 1 to {demo.MAX_PICTURES}" in _help(capsys, "demo")
