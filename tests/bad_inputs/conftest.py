"""The bad-input suite's harness: run an `edge-vlm` command on a damaged or hostile input and check that it is refused
as the project promises: exit code 2, exactly one line on stderr naming what is wrong, no traceback, and nothing
written or left behind (the watched folders and the temp folder are unchanged).

Most cases run in this process (`edge_vlm.cli.main.main`, stderr captured at the file-descriptor level so a library's
own prints are seen too): the heavy imports are paid once. Cases that need stdin, a signal or a possible hang run in a
fresh interpreter with a timeout (`isolated=True`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folders` with its size and modification time."""
    seen = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            continue
        for path in [folder, *folder.rglob("*")]:
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            seen[str(path)] = (stat.st_size if path.is_file() else 0, stat.st_mtime_ns)
    return seen


class Refusals:
    """`refused(*argv, match=..., watch=[folders])` runs the command and asserts the promise above."""

    def __init__(self, tmp_path: Path, capfd, monkeypatch):
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self._capfd = capfd
        monkeypatch.setattr(tempfile, "tempdir", str(self.tmp))
        monkeypatch.setenv("TMPDIR", str(self.tmp))

    def run(self, *argv: str, isolated: bool = False, stdin: bytes | None = None, timeout: float = 120) -> Outcome:
        argv = [str(a) for a in argv]
        if isolated or stdin is not None:
            result = subprocess.run([sys.executable, "-m", "edge_vlm.cli.main", *argv], input=stdin or b"",
                                    capture_output=True, timeout=timeout, env={**os.environ, "TMPDIR": str(self.tmp)})
            return Outcome(result.returncode, result.stdout.decode(errors="replace"),
                           result.stderr.decode(errors="replace"))
        from edge_vlm.cli.main import main

        self._capfd.readouterr()
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = self._capfd.readouterr()
        return Outcome(code, out, err)

    def __call__(self, *argv, match: str, watch=(), isolated: bool = False, stdin: bytes | None = None,
                 timeout: float = 120) -> Outcome:
        before = snapshot(*watch)
        outcome = self.run(*argv, isolated=isolated, stdin=stdin, timeout=timeout)
        lines = outcome.stderr.strip().splitlines()
        context = f"edge-vlm {' '.join(map(str, argv))}\nexit {outcome.code}\nstderr:\n{outcome.stderr}"
        assert "Traceback" not in outcome.stderr, context
        assert outcome.code == 2, context
        assert len(lines) == 1, context
        assert match.lower() in lines[0].lower(), f"expected {match!r} in the error\n{context}"
        assert snapshot(*watch) == before, f"files changed or left behind\n{context}"
        assert not any(self.tmp.iterdir()), f"temp files left behind: {list(self.tmp.iterdir())}\n{context}"
        return outcome


@pytest.fixture
def refused(tmp_path, capfd, monkeypatch) -> Refusals:
    return Refusals(tmp_path, capfd, monkeypatch)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be written into. Permission bits do not bind root, so as root a read-only file system
    is mounted there instead (tmpfs); where that is not allowed either, the case is skipped with the reason."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip("running as root (a mode-555 folder is writable for root) and no read-only file system can be "
                    f"mounted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
