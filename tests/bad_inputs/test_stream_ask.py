"""Damaged and hostile inputs to `ask`, `stream`, `data synth` and `demo`: text that is not UTF-8 (on the command line,
in --prompt, on ask -i's stdin), sizes without a sane bound, outputs that cannot be written, frame sources with
nothing or little decodable in them, and a conversation that outgrows the model's context.

Every damaged input is generated here. Refusals go through the `refused` fixture (exit 2, one line, nothing written
or left behind); inputs that are odd but valid go through `refused.run` and the result is checked.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A byte sequence that is not UTF-8 as Python hands it over from the command line (argv is decoded with
# 'surrogateescape': byte 0xE9 becomes U+DCE9).
NOT_UTF8_ARG = b"caf\xe9?".decode("utf-8", "surrogateescape")


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def write_frames(folder, pattern: str):
    """A folder of numbered frames: 'G' a good PNG (its red channel = 10 x its number), 'B' a corrupt file (a PNG
    signature, then garbage). Returns the names of the good frames in order."""
    folder.mkdir(exist_ok=True)
    good = []
    for index, kind in enumerate(pattern):
        path = folder / f"frame_{index:03d}.png"
        if kind == "G":
            rgb = np.zeros((24, 32, 3), np.uint8)
            rgb[..., 0] = 10 * index % 256
            Image.fromarray(rgb).save(path)
            good.append(path.name)
        else:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (index % 3 + 1))
    return good


def summary_of(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])["summary"]


# ----------------------------------------------------------------------------------------------------------- ask
def test_ask_refuses_a_question_that_is_not_utf8(refused, tiny_checkpoint, picture):
    refused("ask", "--model", tiny_checkpoint, "--image", picture, NOT_UTF8_ARG,
            match="the question is not valid UTF-8 text (byte 0xe9 at character 4)")


def test_ask_refuses_a_non_utf8_question_even_with_interactive(refused, tiny_checkpoint):
    refused("ask", "--model", tiny_checkpoint, "-i", NOT_UTF8_ARG, match="not valid UTF-8", isolated=True)


def test_ask_interactive_skips_a_stdin_line_that_is_not_utf8_and_goes_on(refused, tiny_checkpoint, picture):
    stdin = b"What is it?\n\xff\xfe broken \xe9\nAnd now?\n"
    outcome = refused.run("ask", "--model", tiny_checkpoint, "--image", picture, "-i", "--max-new-tokens", "3",
                          stdin=stdin)
    assert "Traceback" not in outcome.stderr
    assert outcome.code == 2, outcome.stderr  # something was refused: a script can tell
    errors = [line for line in outcome.stderr.splitlines() if "error" in line]
    assert errors == ["edge-vlm ask: error: line 2 of stdin is not valid UTF-8 text (byte 0xff at byte 1): skipped"]
    assert len(outcome.stdout.splitlines()) == 2  # lines 1 and 3 were answered


def test_ask_interactive_refuses_a_question_too_long_for_the_context_and_goes_on(refused, tiny_checkpoint,
                                                                                 picture):
    stdin = ("word " * 700 + "\nWhat colour is it?\n").encode()  # the tiny preset's context is 512 tokens
    outcome = refused.run("ask", "--model", tiny_checkpoint, "--image", picture, "-i", "--max-new-tokens", "3",
                          stdin=stdin)
    assert "Traceback" not in outcome.stderr and outcome.code == 2, outcome.stderr
    errors = [line for line in outcome.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "context is 512" in errors[0], outcome.stderr
    assert len(outcome.stdout.splitlines()) == 1  # the second question was answered


def test_ask_interactive_drops_old_turns_when_the_context_fills(refused, tiny_checkpoint, picture):
    """25 questions of ~20 tokens with 32-token answers are ~1,500 tokens: three times the tiny preset's context.
    Every question is answered, the user is told once, exit 0."""
    questions = [f"question number {i}: what is in the picture, and where is it?" for i in range(25)]
    outcome = refused.run("ask", "--model", tiny_checkpoint, "--image", picture, "-i", "--max-new-tokens", "32",
                          stdin="\n".join(questions).encode() + b"\n", timeout=300)
    assert outcome.code == 0, outcome.stderr
    assert len(outcome.stdout.splitlines()) == len(questions)
    assert outcome.stderr.count("oldest turns are being dropped") == 1, outcome.stderr


def test_chat_keeps_the_image_and_the_latest_turns_within_the_context(tiny_checkpoint, picture):
    """What the engine is given after the history outgrew the context: the latest turns (a suffix of the
    conversation), the image in front of the first remaining question, and room for max_new_tokens."""
    from edge_vlm.engine import Chat, GenerationConfig
    from edge_vlm.model.engine import TorchEngine
    from edge_vlm.prompting import IMAGE_PLACEHOLDER, PHI2_SYSTEM, inference_prompt

    engine = TorchEngine.from_checkpoint(tiny_checkpoint)
    calls = []
    real_stream = engine.stream

    def recording_stream(prepared, question, history=None, config=None):
        calls.append((question, list(history or [])))
        return real_stream(prepared, question, history, config)

    engine.stream = recording_stream
    chat = Chat(engine, picture, GenerationConfig(max_new_tokens=24))
    asked = []
    for i in range(14):
        question = f"question {i}: is there a red square in the top left corner of the picture?"
        chat.ask(question)
        asked.append(question)
    assert chat.dropped_turns > 0
    everything = list(chat.history)
    for question, history in calls:
        past = [q for q, _ in history]
        assert past == asked[asked.index(question) - len(past):asked.index(question)]  # the latest turns, in order
        prompt = inference_prompt(question, history)
        assert prompt.startswith(f"{PHI2_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n")  # system prompt, then the image
        ids = engine.tokenizer.encode_prompt(prompt, engine.num_image_tokens)
        assert len(ids) + 24 <= engine.context_length
    assert everything[-1][0] == asked[-1]


# --------------------------------------------------------------------------------------------------------- stream
def stream_args(checkpoint, source, *extra):
    return ("stream", "--model", checkpoint, "--source", source, "--prompt", "What is it?", "--max-new-tokens", "2",
            *extra)


def test_stream_refuses_a_prompt_that_is_not_utf8(refused, tiny_checkpoint):
    refused("stream", "--model", tiny_checkpoint, "--source", "synthetic", "--prompt", NOT_UTF8_ARG,
            match="is not valid UTF-8 text (byte 0xe9 at character 4)")


@pytest.mark.parametrize("size, match", [
    ("100000x100000", "each side must be 8 to 8192 pixels"),
    ("8193x100", "each side must be 8 to 8192 pixels"),
    ("0x0", "each side must be 8 to 8192 pixels"),
    ("-5x10", "each side must be 8 to 8192 pixels"),
    ("abc", "--size must look like 320x240"),
    ("320x", "--size must look like 320x240"),
])
def test_stream_refuses_a_size_out_of_bounds_before_drawing(refused, tiny_checkpoint, size, match):
    refused(*stream_args(tiny_checkpoint, "synthetic", f"--size={size}"), match=match)


def test_stream_refuses_outputs_under_a_file(refused, tiny_checkpoint, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for flag, name in (("--record", "run.avi"), ("--jsonl", "answers.jsonl"), ("--out-bag", "bag")):
        refused(*stream_args(tiny_checkpoint, "synthetic", flag, a_file / name), match=f"{a_file} is a file",
                watch=[tmp_path])


@pytest.mark.parametrize("flag, name", [("--record", "run.avi"), ("--jsonl", "answers.jsonl"),
                                        ("--out-bag", "bag")])
def test_stream_refuses_outputs_in_a_read_only_folder(refused, tiny_checkpoint, readonly_dir, flag, name):
    refused(*stream_args(tiny_checkpoint, "synthetic", flag, readonly_dir / name), match="not writable",
            watch=[readonly_dir])


def test_stream_refuses_a_recording_format_it_cannot_write(refused, tiny_checkpoint, tmp_path):
    refused(*stream_args(tiny_checkpoint, "synthetic", "--record", tmp_path / "run.txt"), match="must end in one of",
            watch=[tmp_path])


@pytest.mark.parametrize("make, match", [
    (lambda root: root / "missing", "image folder not found"),
    (lambda root: root, "no images"),
])
def test_stream_refuses_an_empty_or_missing_folder_source(refused, tiny_checkpoint, tmp_path, make, match):
    folder = make(tmp_path / "frames")
    (tmp_path / "frames").mkdir()
    refused(*stream_args(tiny_checkpoint, f"folder:{folder}"), match=match, watch=[tmp_path])


@pytest.mark.parametrize("flag, value, match", [
    ("--max-hz", "nan", "argument --max-hz: 'nan' is not a finite number"),
    ("--max-hz", "0", "argument --max-hz: must be a number > 0, got 0"),
    ("--max-hz", "-2", "argument --max-hz: must be a number > 0, got -2"),
    ("--max-hz", "inf", "argument --max-hz: 'inf' is not a finite number"),
    ("--fps", "nan", "argument --fps: 'nan' is not a finite number"),
    ("--fps", "0", "argument --fps: must be a frame rate > 0 and <= 1000, got 0"),
    ("--fps", "1e999", "argument --fps: '1e999' is not a finite number"),  # float() reads it as infinity
    ("--fps", "5000", "argument --fps: must be a frame rate > 0 and <= 1000, got 5000"),
    ("--max-age-ms", "nan", "argument --max-age-ms: 'nan' is not a finite number"),
    ("--max-age-ms", "0", "argument --max-age-ms: must be a number > 0, got 0"),
    ("--duration", "nan", "argument --duration: 'nan' is not a finite number"),
    ("--duration", "-5", "argument --duration: must be a number > 0, got -5"),
    ("--speed", "nan", "argument --speed: 'nan' is not a finite number"),
    ("--speed", "0", "argument --speed: must be a number > 0, got 0"),
    ("--speed", "-inf", "argument --speed: '-inf' is not a finite number"),
    ("--fps", "fast", "argument --fps: expected a number, got 'fast'"),
])
def test_stream_refuses_a_rate_or_time_that_is_not_a_positive_number(refused, tiny_checkpoint, flag, value, match):
    refused(*stream_args(tiny_checkpoint, "synthetic", f"{flag}={value}"), match=match)


def test_stream_refuses_a_synthetic_rate_that_is_not_a_number(refused, tiny_checkpoint):
    refused(*stream_args(tiny_checkpoint, "synthetic:nan"), match="synthetic fps must be a finite number > 0, got nan")


def test_stream_refuses_a_prompt_longer_than_the_context_before_starting(refused, tiny_checkpoint, tmp_path):
    jsonl = tmp_path / "answers.jsonl"
    refused("stream", "--model", tiny_checkpoint, "--source", "synthetic", "--prompt", "red " * 5000, "--jsonl",
            jsonl, "--quiet", match="but the model's context is", watch=[tmp_path])
    assert not jsonl.exists()


def test_stream_with_a_model_whose_output_overflows_fails_in_one_line(refused, tiny_checkpoint, tmp_path):
    """No frame was answered: the error is the only line, no summary (nor its stdout record)."""
    from tests.bad_inputs.test_train_eval import overflowing

    model = overflowing(Path(shutil.copytree(tiny_checkpoint, tmp_path / "model")))
    outcome = refused("stream", "--model", model, "--source", "synthetic", "--prompt", "What is it?",
                      "--max-new-tokens", "2", "--quiet", match="the model's output holds NaN or infinity")
    assert outcome.stdout == ""


def _garbage_video(path):
    path.write_bytes(bytes(range(256)) * 64)  # no container signature: FFmpeg probes it and gives up
    return f"video:{path}"


def _truncated_video(path):
    """A real MJPG .avi (OpenCV writes it), cut to its first 300 bytes: the header survives, the frames do not."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for _ in range(5):
        writer.write(np.zeros((24, 32, 3), np.uint8))
    writer.release()
    path.write_bytes(path.read_bytes()[:300])
    return f"video:{path}"


@pytest.mark.parametrize("make, match", [
    (lambda tmp: _garbage_video(tmp / "clip.mp4"), "not a video OpenCV can decode"),
    (lambda tmp: _truncated_video(tmp / "clip.avi"), "clip.avi"),
    (lambda tmp: "camera:99", "OpenCV could not open 99"),  # no /dev/video99 on a test machine
    (lambda tmp: "rtsp://127.0.0.1:1/stream", "OpenCV could not open 'rtsp://127.0.0.1:1/stream'"),  # port 1: refused
])
def test_stream_refuses_a_video_camera_or_url_it_cannot_open_in_one_line(refused, tiny_checkpoint, tmp_path, make,
                                                                        match):
    """OpenCV's and FFmpeg's own log lines ('moov atom not found', '[ WARN:0] can't open camera by index', 'Connection
    refused') would come before our line: they are silenced. In a fresh process, since they go straight to fd 2."""
    source = make(tmp_path)
    refused(*stream_args(tiny_checkpoint, source, "--quiet"), match=match, watch=[tmp_path], isolated=True)


def test_stream_refuses_an_empty_video_before_ffmpeg_sees_it(refused, tiny_checkpoint, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    for source in (f"video:{tmp_path / 'empty.mp4'}", tmp_path / "empty.mp4"):
        refused(*stream_args(tiny_checkpoint, source), match=f"video file {tmp_path / 'empty.mp4'} is empty (0 bytes)",
                watch=[tmp_path])


@pytest.mark.parametrize("quiet", [True, False])
def test_stream_of_only_corrupt_frames_fails_in_one_line(refused, tiny_checkpoint, tmp_path, quiet):
    """Nothing was answered, so there is no summary: the error is the last line; --quiet leaves only that line
    (without it, the first undecodable frames are named before it)."""
    write_frames(tmp_path / "frames", "B" * 7)
    jsonl = tmp_path / "answers.jsonl"
    outcome = refused.run(*stream_args(tiny_checkpoint, f"folder:{tmp_path / 'frames'}", "--playback", "lossless",
                                       "--jsonl", jsonl, *(["--quiet"] if quiet else [])))
    assert "Traceback" not in outcome.stderr and outcome.code == 2, outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert lines[-1] == (
        f"edge-vlm stream: error: source folder:{tmp_path / 'frames'} failed: none of its 7 frame(s) could be decoded")
    skipped = sum(": skipped: " in line for line in lines)
    assert (len(lines), skipped) == ((1, 0) if quiet else (len(lines), 7)), outcome.stderr
    assert outcome.stdout == ""  # no summary record either
    assert jsonl.read_text() == ""  # complete: no answer, no half line


@pytest.mark.parametrize("playback", ["lossless", "realtime"])
def test_stream_skips_runs_of_corrupt_frames_and_answers_every_good_one(refused, tiny_checkpoint, tmp_path,
                                                                       playback):
    """Runs of 5 to 10 undecodable files between good frames: each skipped and counted (bad_frames), every good
    frame still comes, the run ends normally."""
    pattern = "GG" + "B" * 5 + "G" + "B" * 10 + "GG" + "B" * 7 + "G"
    good = write_frames(tmp_path / "frames", pattern)
    jsonl = tmp_path / "answers.jsonl"
    outcome = refused.run(*stream_args(tiny_checkpoint, f"folder:{tmp_path / 'frames'}", "--playback", playback,
                                       "--fps", "50", "--jsonl", jsonl, *(["--quiet"] if playback == "lossless" else [])))
    assert outcome.code == 0, outcome.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    summary = summary_of(outcome.stdout)
    assert summary["bad_frames"] == pattern.count("B") == 22
    assert summary["frames_captured"] == len(good) and summary["stop_reason"] == "end of stream"
    assert summary["answers"] == len(rows) and summary["source_errors"] == 0
    answered = [row["meta"]["path"] for row in rows]
    assert answered == sorted(answered) and set(answered) <= set(good)
    if playback == "lossless":
        assert answered == good
    # the first few are named, then only counted; --quiet names none
    named = sum("skipped: cannot read image" in line for line in outcome.stderr.splitlines())
    assert named == (0 if playback == "lossless" else 10)


# ---------------------------------------------------------------------------------------------------- data synth
@pytest.mark.parametrize("size", ["100000", "4097", "0", "-5", "31"])
def test_synth_refuses_an_image_size_out_of_bounds(refused, tmp_path, size):
    refused("data", "synth", "--out", tmp_path / "world", "--train", "2", "--eval", "1", "--quiet",
            f"--image-size={size}", match="--image-size must be 32 to 4096 pixels", watch=[tmp_path])
    assert not (tmp_path / "world").exists()


def test_synth_refuses_an_output_under_a_file(refused, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    refused("data", "synth", "--out", a_file / "world", "--train", "2", "--eval", "1", "--quiet",
            match=f"{a_file} is a file", watch=[tmp_path])


def test_synth_force_never_replaces_a_users_folder(refused, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"my picture")
    (folder / "world.json").write_text('{"mine": true}')  # a file of that name alone does not make it a world
    refused("data", "synth", "--out", folder, "--train", "2", "--eval", "1", "--quiet", "--force",
            match="replaces only an earlier synthetic world", watch=[tmp_path])
    refused("data", "synth", "--out", folder, "--train", "2", "--eval", "1", "--quiet",
            match="is not an earlier synthetic world", watch=[tmp_path])


def test_synth_refuses_a_read_only_folder(refused, readonly_dir):
    refused("data", "synth", "--out", readonly_dir / "world", "--train", "2", "--eval", "1", "--quiet",
            match="not writable", watch=[readonly_dir])


# ---------------------------------------------------------------------------------------------------------- demo
def test_demo_refuses_a_contact_sheet_under_a_file(refused, tiny_checkpoint, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    refused("demo", "--model", tiny_checkpoint, "--out", a_file / "sheet.png", match=f"{a_file} is a file",
            watch=[tmp_path])


@pytest.mark.parametrize("n", ["0", "100000"])
def test_demo_refuses_a_picture_count_out_of_bounds(refused, tiny_checkpoint, tmp_path, n):
    refused("demo", "--model", tiny_checkpoint, "--n", n, "--out", tmp_path / "sheet.png", match="--n must be 1 to 100",
            watch=[tmp_path])


def test_stream_jsonl_keeps_a_file_name_that_is_not_utf8(refused, tiny_checkpoint, tmp_path):
    """A frame file whose name is not UTF-8 is answered; its JSONL line stays valid JSON, with the name's byte as
    the JSON escape of Python's surrogate (read back, it is the same name)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    name = os.fsdecode(b"frame_\xff.png")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(frames / name)
    jsonl = tmp_path / "answers.jsonl"
    outcome = refused.run(*stream_args(tiny_checkpoint, f"folder:{frames}", "--playback", "lossless", "--jsonl",
                                       jsonl, "--quiet"))
    assert outcome.code == 0, outcome.stderr
    raw = jsonl.read_bytes()
    assert b'"path": "frame_\\udcff.png"' in raw
    assert [json.loads(line)["meta"]["path"] for line in raw.decode("utf-8").splitlines()] == [name]
