"""Hostile data files and command lines for `edge-vlm data validate` and `edge-vlm data synth`: every one refused in
one line (exit 2) before any work starts, nothing written. Every input is generated here.

The expected positions (line:column) are counted by hand, 1-based as editors show them; the bounds are the ones the
--help texts and the README promise.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

GOOD_RECORD = {"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}


def _write(folder: Path, name: str, data: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ------------------------------------------------------------------------------ data validate: what the file is
def test_a_device_a_folder_and_a_huge_file_are_refused_before_reading(refused, tmp_path):
    # /dev/zero never ends: read whole, it filled the memory until the kernel killed the process
    refused("data", "validate", "/dev/zero", match="/dev/zero is not a regular file but a character device")
    refused("data", "validate", tmp_path, match="is not a regular file but a directory", watch=[tmp_path])
    huge = tmp_path / "huge.json"
    with huge.open("wb") as handle:  # sparse: 2 GiB + 1 byte that take no disk and must never be read
        handle.truncate(2 * 1024**3 + 1)
    refused("data", "validate", huge, match="huge.json is 2,147,483,649 bytes, more than a data file's limit of "
                                            "2,147,483,648", watch=[tmp_path])
    refused("data", "validate", tmp_path / "nope.json", match="data file not found", watch=[tmp_path])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("name", ["p.json", "p.jsonl"])
def test_a_fifo_does_not_block(refused, tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)  # nobody ever writes to it: a plain open() would wait forever
    refused("data", "validate", fifo, match=f"{name} is not a regular file but a FIFO", isolated=True, timeout=60,
            watch=[tmp_path])


# ------------------------------------------------------------------------------ data validate: what the JSON holds
DEEP = 100_000
JSON_CASES = [
    ("nested.json", "[" * DEEP + "]" * DEEP, "nested.json:1: lists or objects nested too deeply"),
    ("nested.jsonl", json.dumps(GOOD_RECORD) + "\n" + "[" * DEEP + "]" * DEEP + "\n",
     "nested.jsonl:2: lists or objects nested too deeply"),
    ("bigint.json", '[{"id": ' + "9" * 100_000 + "}]", "bigint.json:1: an integer of more than"),
    # line 2 is '{"id": NaN, ...': NaN starts at column 8
    ("nan.json", '[\n{"id": NaN, "conversations": []}\n]', "nan.json:2:8: NaN is not a JSON value"),
    ("inf.json", '[{"id": "x", "n": Infinity}]', "inf.json:1:19: Infinity is not a JSON value"),
    ("-inf.json", '[{"id": "x", "n": -Infinity}]', "-inf.json:1:19: -Infinity is not a JSON value"),
    ("1e999.json", '[{"id": "x", "n": 1e5, "m": 1e999}]', "1e999.json:1:29: 1e999 is larger than a number may be"),
    # a NaN inside a string is text, not the constant: the position is the one outside the string
    ("nan-in-text.json", '[{"id": "NaN", "n": NaN}]', "nan-in-text.json:1:21: NaN is not a JSON value"),
    ("nan.jsonl", json.dumps(GOOD_RECORD) + "\n\n" + '{"id": NaN}\n', "nan.jsonl:3:8: NaN is not a JSON value"),
    ("one-a-line.json", json.dumps(GOOD_RECORD) + "\n" + json.dumps(GOOD_RECORD) + "\n",
     "one-a-line.json:2:1: Extra data (the data file is not valid JSON); a file with one record a line must be "
     "named .jsonl"),
]


@pytest.mark.parametrize("name, text, match", JSON_CASES, ids=[case[0] for case in JSON_CASES])
def test_json_that_python_would_take_or_choke_on(refused, tmp_path, name, text, match):
    path = _write(tmp_path, name, text)
    refused("data", "validate", path, match=match, watch=[tmp_path])


@pytest.mark.parametrize("name, text", [("empty.json", "[]"), ("blank.jsonl", "\n  \n"), ("nothing.jsonl", "")])
def test_a_file_without_samples_is_refused(refused, tmp_path, name, text):
    # `validated 0 samples, 0 with problems` would pass a file that training refuses
    path = _write(tmp_path, name, text)
    refused("data", "validate", path, match=f"{name} holds no samples", watch=[tmp_path])
    refused("data", "validate", path, "--format", "sharegpt", match=f"{name} holds no samples", watch=[tmp_path])


@pytest.mark.parametrize("flag, value", [
    ("--num-image-tokens", "-5"), ("--num-image-tokens", "0"), ("--num-image-tokens", str(2**20 + 1)),
    ("--num-image-tokens", "many"), ("--context-length", "0"), ("--context-length", "-2048"),
    ("--context-length", str(2**20 + 1)),
])
def test_token_counts_out_of_range(refused, tmp_path, flag, value):
    path = _write(tmp_path, "d.json", json.dumps([GOOD_RECORD]))
    refused("data", "validate", path, flag, value, match=f"argument {flag}: ", watch=[tmp_path])


def test_token_counts_at_their_bounds_are_taken(refused, tmp_path):
    path = _write(tmp_path, "d.json", json.dumps([GOOD_RECORD]))
    for flag, value in (("--num-image-tokens", "1"), ("--context-length", str(2**20))):
        outcome = refused.run("data", "validate", path, flag, value)
        assert outcome.code == 0 and "validated 1 finetune samples" in outcome.stdout, outcome.stderr


# ------------------------------------------------------------------------------ data synth: the command line
@pytest.mark.parametrize("argv, match", [
    (["--train", "99999999999999"], "argument --train: 99999999999999: give 1 to 10,000,000"),
    (["--train", "10000001"], "argument --train: 10000001: give 1 to 10,000,000"),
    (["--train", "0"], "argument --train: 0: give 1 to 10,000,000"),
    (["--eval", "-1"], "argument --eval: -1: give 0 to 10,000,000"),
    (["--eval", "10000001"], "argument --eval: 10000001: give 0 to 10,000,000"),
    (["--sft", "-3"], "argument --sft: -3: give 0 to 10,000,000"),
    (["--sft", "99999999999999"], "argument --sft: 99999999999999: give 0 to 10,000,000"),
    (["--text-only", "-1"], "argument --text-only: -1: give 0 to 10,000,000"),
    (["--text-only", "10000001"], "argument --text-only: 10000001: give 0 to 10,000,000"),
    (["--extra-questions", "-1"], "argument --extra-questions: -1: give 0 to 100"),
    (["--seed", str(2**70)], f"argument --seed: seed must be an integer from 0 to 4294967295 (2**32-1), got {2**70}"),
    (["--seed", str(2**32)], "argument --seed: seed must be an integer from 0 to 4294967295"),
    (["--seed", "-1"], "argument --seed: seed must be an integer from 0 to 4294967295"),
    (["--train", "2.5"], "argument --train: expected an integer, got '2.5'"),
])
def test_synth_counts_and_seed_out_of_range(refused, tmp_path, argv, match):
    refused("data", "synth", "--out", tmp_path / "w", "--quiet", *argv, match=match, watch=[tmp_path])
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("out, match", [
    ("", "--out is empty"),
    ("  ", "--out is empty"),
    (".", "--out . is the current folder or a folder above it"),
    ("./", "--out ./ is the current folder or a folder above it"),
    ("..", "--out .. is the current folder or a folder above it"),
    ("/", "--out / is the current folder or a folder above it"),
    ("sub/new/..", "--out sub/new/.. ends in '..'"),
])
def test_synth_out_that_is_no_new_folder(refused, tmp_path, monkeypatch, out, match):
    # Before the fix, '' and '.' drew a whole world and then ended in a traceback, leaving a hidden ..tmp-* folder
    here = tmp_path / "here"
    (here / "sub").mkdir(parents=True)
    _write(here, "notes.txt", "mine")
    monkeypatch.chdir(here)
    refused("data", "synth", "--out", out, "--train", "2", "--eval", "1", "--quiet", match=match,
            watch=[tmp_path])


def test_synth_out_the_current_folder_even_with_force_inside_a_world(refused, tmp_path, monkeypatch):
    from edge_vlm.data.synth import write_world

    world = tmp_path / "world"
    write_world(world, train=2, eval_size=1, progress=False)
    monkeypatch.chdir(world)
    for out in (".", str(world), str(tmp_path)):
        refused("data", "synth", "--out", out, "--train", "2", "--eval", "1", "--quiet", "--force",
                match="is the current folder or a folder above it", watch=[tmp_path])


def test_synth_out_a_path_that_is_not_utf8(refused, tmp_path):
    # Linux paths are bytes: one that is not UTF-8 is a valid folder name, and the world is written there
    raw = os.fsencode(tmp_path) + b"/w\xff x'"
    outcome = refused.run("data", "synth", "--out", os.fsdecode(raw), "--train", "2", "--eval", "1", "--quiet",
                          isolated=True)
    assert outcome.code == 0, outcome.stderr
    assert os.path.isfile(raw + b"/world.json")
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"tmp", b"w\xff x'"]  # tmp: the harness's; no leftover
    assert "wrote the synthetic world to " + str(tmp_path) + "/w\\xff x'" in outcome.stdout
    command = json.loads(Path(os.fsdecode(raw + b"/world.json")).read_text(encoding="utf-8"))["command"]
    # world.json is UTF-8 text; its command must still name the folder: bash itself reads the quoted --out back
    quoted = command.split(" --out ", 1)[1].split(" --train", 1)[0]
    listed = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, check=True).stdout
    assert listed == raw
