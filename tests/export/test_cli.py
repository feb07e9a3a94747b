"""`edge-vlm export` as a user runs it: refusals with one clear line, an interrupted export leaves nothing behind,
and (slow) a whole --int8 export with its progress lines, then `info` and `ask` on the bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_refuses_to_overwrite_without_force(exportable_tiny, tmp_path, cli):
    (tmp_path / "b").mkdir()
    result = cli("export", "--model", str(exportable_tiny), "--out", str(tmp_path / "b"))
    assert result.returncode == 2
    assert "already exists; pass --force" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/ckpt"], "model directory not found: /nonexistent/ckpt"),
    (["--precision", "fp16"], "fp16 needs a GPU target"),
    (["--precision", "fp32", "--calibration", "x.json"], "--calibration is for quantized decoders"),
    (["--target", "tpu"], "unknown target 'tpu'"),
    (["--quant-method", "gptq"], "--quant-method gptq needs --calibration"),
])
def test_bad_arguments_give_one_clear_line(exportable_tiny, tmp_path, cli, args, message):
    full = ["export", "--model", str(exportable_tiny), "--out", str(tmp_path / "b"), *args]
    result = cli(*full)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_interrupted_export_leaves_no_bundle(exportable_tiny, tmp_path):
    """Ctrl-C while the builder runs (step 4): exit 130, no bundle, no temp folder, no builder left running."""
    import psutil

    out = tmp_path / "bundle"
    # A stand-in builder that sleeps: the real one can finish a tiny model before the signal arrives.
    root = str(Path(__file__).resolve().parents[2])  # where `tests.export.sleepy_builder` is importable from
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGE_VLM_GENAI_BUILDER": "tests.export.sleepy_builder",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_vlm.cli.main", "export", "--model", str(exportable_tiny), "--out", str(out),
         "--precision", "fp32", "--val-samples", "2", "--val-max-new-tokens", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        # a shell's background job (CI started with `&`) ignores SIGINT, and its children inherit that: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("[4/6]"):
            break
    children = []
    deadline = time.time() + 60
    while not children and time.time() < deadline:  # wait until the builder subprocess exists
        children = psutil.Process(process.pid).children(recursive=True)
        time.sleep(0.2)
    assert children, "".join(lines)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its hidden temp folder
    time.sleep(0.5)
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


@pytest.mark.slow
def test_full_int8_export_then_info_and_ask(exportable_tiny, tmp_path, cli):
    out = tmp_path / "int8"
    result = cli("export", "--model", str(exportable_tiny), "--out", str(out), "--int8", "--val-samples", "2",
                 "--val-max-new-tokens", "4", "--allow-degraded")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line[:5] for line in result.stdout.splitlines() if line.startswith("[")] == [
        "[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["decoder"] == "int8" and manifest["quantization"]["bits"] == 8
    info = cli("info", str(out))
    assert info.returncode == 0 and "decoder int8" in info.stdout
    ask = cli("ask", "--bundle", str(out), "--max-new-tokens", "4", "What is this?")
    assert ask.returncode == 0, ask.stderr


def test_force_replaces_an_earlier_bundle_only_once_the_export_succeeds(fp32_bundle, exportable_tiny, tmp_path,
                                                                       monkeypatch, capsys):
    """--force onto an earlier bundle passes the output checks (the export gets to loading the checkpoint); an export
    that then fails leaves the earlier bundle as it was and no temp folder."""
    import shutil

    from edge_vlm.cli.main import main
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.export import pipeline

    earlier = Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))
    before = {p.name: p.read_bytes() for p in earlier.rglob("*") if p.is_file()}

    def stop(*_args, **_kwargs):
        raise EdgeVLMError("stopped at loading (the test's stand-in)")

    monkeypatch.setattr(pipeline, "_load", stop)
    code = main(["export", "--model", str(exportable_tiny), "--out", str(earlier), "--force"])
    assert code == 2 and "stopped at loading" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in earlier.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
