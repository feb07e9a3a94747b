"""`edge-vlm serve` refuses a bad command line in one line, exit 2, before it serves anything (and mostly before it
loads the model). Bad HTTP requests to a running server are in tests/serve/test_bad_requests.py."""

from __future__ import annotations

import socket

import pytest

CHECKPOINT = "edge_vlm/assets/builtin"


@pytest.mark.parametrize("argv, match", [
    (["--port", "70000"], "--port 70000 is not a TCP port"),
    (["--port", "-1"], "--port -1 is not a TCP port"),
    (["--host", "192.0.2.1"], "cannot listen on 192.0.2.1"),  # an address of no interface here (TEST-NET-1)
    (["--max-queue", "0"], "--max-queue must be >= 1"),
    (["--request-timeout", "0"], "argument --request-timeout: must be a number > 0, got 0"),
    (["--request-timeout", "nan"], "argument --request-timeout: 'nan' is not a finite number"),
    (["--request-timeout", "inf"], "argument --request-timeout: 'inf' is not a finite number"),
    (["--max-image-bytes", "0"], "--max-image-bytes must be >= 1"),
    (["--max-image-pixels", "-5"], "--max-image-pixels must be >= 1"),
    (["--image-cache-mb", "-1"], "argument --image-cache-mb: must be a number >= 0, got -1"),
    (["--image-cache-mb", "nan"], "argument --image-cache-mb: 'nan' is not a finite number"),
    (["--threads", "0"], "argument --threads: 0 threads: give 1 to"),
    (["--threads", "100000"], "argument --threads: 100000 threads: give 1 to"),
    (["--model-name", ""], "argument --model-name: needs a name, got an empty string"),
    (["--model-name", "  "], "argument --model-name: needs a name, got an empty string"),
    (["--api-key", "  "], "the API key is empty"),
    (["--cors-origin", "robot.local"], "--cors-origin 'robot.local' must look like http://host:port"),
    (["--source", "synthetic"], "--source needs at least one --prompt"),
    (["--prompt", "What is moving?"], "--prompt is for the live stream"),
    (["--source", "synthetic", "--prompt", "hi", "--max-hz", "0"], "argument --max-hz: must be a number > 0, got 0"),
    (["--source", "synthetic", "--prompt", "hi", "--max-hz", "nan"], "argument --max-hz: 'nan' is not a finite"),
    (["--source", "synthetic", "--prompt", "hi", "--fps", "0"], "argument --fps: must be a frame rate > 0 and <= 1000"),
    (["--source", "synthetic", "--prompt", "hi", "--fps", "inf"], "argument --fps: 'inf' is not a finite number"),
    (["--source", "nope:x", "--prompt", "hi"], "source 'nope:x' not found"),
    (["--source", "folder:/nonexistent/frames", "--prompt", "hi"], "/nonexistent/frames"),
    (["--providers", "cpu"], "--providers is for --bundle"),
    (["--bundle", "/nonexistent/bundle"], "--bundle /nonexistent/bundle is not a directory"),
    (["--bundle", CHECKPOINT], "no manifest.json"),
    (["--bundle", CHECKPOINT, "--device", "cuda"], "--device is for --model"),
    (["--model", "/etc/hostname"], "--model /etc/hostname is not a directory"),
    (["--model", "/nonexistent/checkpoint"], "--model /nonexistent/checkpoint is not a directory"),
])
def test_bad_command_lines_are_refused(refused, argv, match):
    port = [] if "--port" in argv else ["--port", "0"]  # never the default 8080, which may be taken here
    refused("serve", *argv, *port, match=match)


def test_a_port_in_use_is_refused(refused):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        refused("serve", "--port", str(port), match=f"cannot listen on 127.0.0.1:{port}")


def test_an_empty_key_in_the_environment_is_refused(refused, monkeypatch):
    monkeypatch.setenv("EDGE_VLM_API_KEY", "")
    refused("serve", "--port", "0", match="the API key is empty")
