"""SIGTERM (what `timeout`, systemd and `docker stop` send) stops every verb as Ctrl-C does: exit 143 (128 + 15) with
one line "edge-vlm VERB: terminated", no hidden temp folder left beside the output, and no child process (the
export's vision exporter or model builder) left running.

Real processes: `edge-vlm data synth` and `edge-vlm export` (on the built-in model) are started, signalled once they
are writing, and checked from outside. The signal goes to the edge-vlm process alone, as `timeout` and `docker stop`
send it: the children must be stopped by edge-vlm itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import edge_vlm

BUILTIN = Path(edge_vlm.__file__).parent / "assets" / "builtin"


@pytest.fixture
def started(tmp_path):
    """started(*argv) -> Popen of `edge-vlm ARGV` in its own process group; the group is killed after the test if
    anything in it is still running (so a failing test leaves nothing behind)."""
    processes = []

    def start(*argv) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "edge_vlm.cli.main", *map(str, argv)], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True, env={**os.environ, "TMPDIR": str(tmp_path)})
        processes.append(process)
        return process

    yield start
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()


def wait_until(condition, process: subprocess.Popen, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ended (exit {process.returncode}) before {what}: {process.communicate()[1][-2000:]}")
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"not {what} within {timeout} s")


def terminate(process: subprocess.Popen, verb: str) -> str:
    """SIGTERM to the process alone; its exit code and last stderr line are the promised ones."""
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f"edge-vlm {verb}: terminated", stderr[-3000:]
    return stderr


def hidden_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_sigterm_during_data_synth_leaves_no_temp_folder(started, tmp_path):
    process = started("data", "synth", "--quiet", "--out", "world", "--train", "200000", "--eval", "0")

    def writing():
        temps = list(tmp_path.glob(".world.tmp-*/images"))
        return temps and len(os.listdir(temps[0])) >= 20

    wait_until(writing, process, 60, "writing pictures")
    terminate(process, "data")
    assert not (tmp_path / "world").exists()
    assert hidden_entries(tmp_path) == []


def test_sigterm_during_export_stops_the_vision_exporter(started, tmp_path):
    process = started("export", "--model", BUILTIN, "--out", "bundle", "--precision", "fp32")
    parent = psutil.Process(process.pid)

    def exporter():
        try:
            return [child for child in parent.children(recursive=True)
                    if "edge_vlm.export.vision" in " ".join(child.cmdline())]
        except psutil.NoSuchProcess:  # a child that ended while being listed: look again
            return []

    children = wait_until(exporter, process, 120, "running the vision exporter")
    terminate(process, "export")
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, f"{child} still runs"
    assert not (tmp_path / "bundle").exists()
    assert hidden_entries(tmp_path) == []


STAND_IN_BUILDER = """\
import os, sys, time
open(os.environ["STAND_IN_PID_FILE"], "w").write(str(os.getpid()))
time.sleep(120)
"""


def test_sigterm_while_the_model_builder_runs_stops_it(tmp_path, monkeypatch):
    """The builder subprocess (a stand-in that only sleeps, through the documented EDGE_VLM_GENAI_BUILDER) is
    stopped and waited for when SIGTERM reaches the exporting process."""
    from edge_vlm.cli.main import Terminated, sigterm_as_interrupt
    from edge_vlm.export.decoder import BUILDER_MODULE_ENV, run_builder

    (tmp_path / "stand_in_builder.py").write_text(STAND_IN_BUILDER)
    pid_file = tmp_path / "builder.pid"
    monkeypatch.setenv(BUILDER_MODULE_ENV, "stand_in_builder")
    monkeypatch.setenv("STAND_IN_PID_FILE", str(pid_file))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))

    def signal_once_started():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (pid_file.exists() and pid_file.read_text()):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    sender = threading.Thread(target=signal_once_started)
    with sigterm_as_interrupt():
        sender.start()
        with pytest.raises(Terminated):
            run_builder(tmp_path / "phi", tmp_path / "built", "fp32", "cpu", tmp_path / "builder.log")
    sender.join()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the verb's only, never left installed
    builder = int(pid_file.read_text())
    assert not psutil.pid_exists(builder) or psutil.Process(builder).status() == psutil.STATUS_ZOMBIE


def test_a_verb_that_ends_puts_the_previous_sigterm_handler_back(capsys):
    """In-process use (tests, a notebook) keeps its own SIGTERM handling once the command returns."""
    from edge_vlm.cli.main import main

    def mine(_signum, _frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["info", str(BUILTIN)]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
