"""The bounds of the data layer as a library: write_world's counts, seed and output path (the CLI refuses the same
while parsing), the shell line written into world.json, and the reader's size cap on a file that grows."""

from __future__ import annotations

import io
import os
import subprocess

import pytest

from edge_vlm.configfile import _read_at_most
from edge_vlm.data.synth import shell_command, write_world
from edge_vlm.errors import EdgeVLMError


@pytest.mark.parametrize("values, match", [
    ({"train": 10_000_001}, "--train must be 1 to 10,000,000, got 10000001"),
    ({"train": 0}, "--train must be 1 to 10,000,000, got 0"),
    ({"eval_size": -1}, "--eval must be 0 to 10,000,000, got -1"),
    ({"sft": -3}, "--sft must be 0 to 10,000,000, got -3"),
    ({"text_only": -1}, "--text-only must be 0 to 10,000,000, got -1"),
    ({"train": 99_999_999_999_999, "sft": 0, "text_only": 0}, "--train must be 1 to 10,000,000"),
    ({"seed": 2**32}, "--seed must be 0 to 4294967295 (2**32-1), got 4294967296"),
    ({"seed": -1}, "--seed must be 0 to 4294967295"),
])
def test_write_world_refuses_counts_and_seeds_before_drawing(tmp_path, values, match):
    with pytest.raises(EdgeVLMError, match=match.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        write_world(tmp_path / "w", **{"train": 2, "eval_size": 1, "progress": False, **values})
    assert list(tmp_path.iterdir()) == []


def test_write_world_refuses_no_new_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in ("", ".", tmp_path, tmp_path.parent, "/"):
        with pytest.raises(EdgeVLMError, match="is empty|is the current folder or a folder above it"):
            write_world(out, train=2, eval_size=1, progress=False, force=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("word", [b"plain", b"with space", b"it's", b"caf\xc3\xa9", b"w\xff", b"a'\\\xfe b$x", b""])
def test_shell_command_is_read_back_by_bash_as_the_same_bytes(word):
    # bash itself is the reference: each word of the line must come back byte for byte
    line = shell_command(["printf", "%s\\0", os.fsdecode(word), "end"])
    out = subprocess.run(["bash", "-c", line], capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [word, b"end"]
    line.encode("utf-8")  # what world.json holds must be UTF-8 text


def test_a_file_that_grows_while_read_is_read_no_further_than_the_cap():
    data = io.BytesIO(b"x" * 1000)  # fstat said 10 bytes; it has grown to 1000 since
    assert len(_read_at_most(data, 10, 51)) == 51
    assert _read_at_most(io.BytesIO(b"abc"), 3, 51) == b"abc"
    assert _read_at_most(io.BytesIO(b"abcdef"), 3, 51) == b"abcdef"  # grew, still under the cap: read whole
