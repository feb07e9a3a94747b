"""Decoding flags: every value that is not a usable number is refused before the model loads."""

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
