"""`edge-vlm stream` in real subprocesses on the tiny random checkpoint: outputs, signals, the bag round trip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from stream_helpers import coloured_frames, write_image_bag

REPO = Path(__file__).resolve().parents[2]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary_of(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])["summary"]


def video_frames(path: Path) -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return frames
        frames.append(bgr[..., ::-1])


def _start_stream(checkpoint: Path, out: Path) -> subprocess.Popen:
    out.mkdir()
    args = [sys.executable, "-m", "edge_vlm.cli.main", "stream", "--model", str(checkpoint),
            "--source", "synthetic:20", "--size", "96x64", "--prompt", "What is moving?", "--prompt", "Colour?",
            "--max-new-tokens", "4", "--jsonl", str(out / "answers.jsonl"), "--record", str(out / "run.avi"),
            "--out-bag", str(out / "answers_bag")]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_sigint_and_sigterm_stop_cleanly_and_flush_every_output(tiny_checkpoint, tmp_path):
    """Killing the stream mid-run (two runs side by side, one per signal): exit 0, every JSONL line complete, the
    recording finished and renamed into place, the output bag closed and readable, the summary printed."""
    runs = {sig: (_start_stream(tiny_checkpoint, tmp_path / sig.name), tmp_path / sig.name)
            for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline = time.monotonic() + 150
        pending = dict(runs)
        while pending and time.monotonic() < deadline:
            for sig, (process, out) in list(pending.items()):
                assert process.poll() is None, process.communicate()
                jsonl = out / "answers.jsonl"
                if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 4:
                    process.send_signal(sig)
                    del pending[sig]
            time.sleep(0.2)
        assert not pending, "no answers within the deadline"
        outputs = {sig: process.communicate(timeout=60) for sig, (process, _) in runs.items()}
    finally:
        for process, _ in runs.values():
            if process.poll() is None:
                process.kill()
    for sig, (process, out) in runs.items():
        stdout, stderr = outputs[sig]
        assert process.returncode == 0, stderr
        rows = read_jsonl(out / "answers.jsonl")  # every line parses: nothing half-written
        assert len(rows) >= 4 and {r["prompt"] for r in rows} == {"What is moving?", "Colour?"}
        summary = summary_of(stdout)
        assert summary["signal"] == sig.name and summary["answers"] == len(rows)
        assert summary["random_weights"] is True and "RANDOM weights" in stderr
        frames = video_frames(out / "run.avi")
        # at least the answered frames (>= 4 answers, 2 prompts per frame); how many more depends on the machine's speed
        assert len(frames) >= 2 and frames[0].shape == (64, 96, 3)
        assert not list(out.glob(".run.*"))  # no temporary recording left behind
        # the answers are drawn on the frames: the top band is darkened and has white text in it
        top = frames[-1][:12].astype(int)
        assert top.max() > 200 and np.median(top) < 120
        from rosbags.highlevel import AnyReader

        with AnyReader([out / "answers_bag"]) as reader:
            texts = [reader.deserialize(raw, c.msgtype).data for c, _, raw in reader.messages()
                     if c.topic == "/edge_vlm/answer"]
        assert texts == [r["text"] for r in rows]


def test_bag_replay_writes_answers_with_source_stamps(tiny_checkpoint, tmp_path, cli):
    frames = coloured_frames(4, size=(48, 32))
    stamps = write_image_bag(tmp_path / "in_bag", frames, compressed_topic="/camera/image_raw/compressed")
    out_bag, jsonl = tmp_path / "out_bag", tmp_path / "answers.jsonl"
    result = cli("stream", "--model", str(tiny_checkpoint), "--source", f"bag:{tmp_path / 'in_bag'}",
                 "--topic", "/camera/image_raw", "--prompt", "What is it?", "--playback", "lossless",
                 "--max-new-tokens", "3", "--jsonl", str(jsonl), "--out-bag", str(out_bag), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(jsonl)
    assert [r["stamp_ns"] for r in rows] == stamps  # one answer per bag frame, stamped with its header
    assert all(r["frame_id"] == "camera_optical" for r in rows)

    from rosbags.highlevel import AnyReader

    with AnyReader([out_bag]) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics == {"/edge_vlm/answer": "std_msgs/msg/String", "/edge_vlm/result": "std_msgs/msg/String"}
        messages = [(c.topic, t, reader.deserialize(raw, c.msgtype).data) for c, t, raw in reader.messages()]
    # the bag orders messages by log time; pair them with the JSONL rows through the source stamp
    results = sorted((json.loads(m[2]) | {"log_time": m[1]} for m in messages if m[0] == "/edge_vlm/result"),
                     key=lambda r: r["stamp_ns"])
    answer_log = sorted((t, text) for topic, t, text in messages if topic == "/edge_vlm/answer")
    header_stamps = [r["header"]["stamp"]["sec"] * 10**9 + r["header"]["stamp"]["nanosec"] for r in results]
    assert header_stamps == stamps
    assert [r["text"] for r in results] == [r["text"] for r in rows]
    for result, row in zip(results, rows):
        # logged on the source's timeline: the frame's stamp plus the frame age at answer
        assert result["log_time"] == int(row["stamp_ns"] + row["frame_age_ms"] * 1e6)
    assert answer_log == sorted((r["log_time"], r["text"]) for r in results)


def test_errors_are_one_line_and_exit_2(tmp_path, cli):
    missing = cli("stream", "--model", str(tmp_path / "nope"), "--source", "synthetic", "--prompt", "q")
    assert missing.returncode == 2 and "model directory not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_source = cli("stream", "--model", str(tmp_path), "--source", "nosuch.thing", "--prompt", "q")
    assert bad_source.returncode == 2 and "not a known form" in bad_source.stderr
    (tmp_path / "exists").mkdir()
    bag = cli("stream", "--model", str(tmp_path), "--source", "synthetic", "--prompt", "q",
              "--out-bag", str(tmp_path / "exists"))
    assert bag.returncode == 2 and "never overwritten" in bag.stderr


def test_bundle_without_the_runtime_says_what_to_do(tmp_path, monkeypatch):
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.stream.engines import load_engine

    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "edge_vlm.runtime", None)  # as if the runtime were not installed
    with pytest.raises(EdgeVLMError, match="BundleEngine.*--model DIR"):
        load_engine(bundle=tmp_path)
    with pytest.raises(EdgeVLMError, match="looks like a checkpoint"):
        (tmp_path / "manifest.json").unlink()
        (tmp_path / "config.json").write_text("{}")
        load_engine(bundle=tmp_path)
