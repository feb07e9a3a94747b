"""One benchmark run of the tiny checkpoint through the CLI, shared by the tests that read its outputs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="session")
def bench_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    files = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "report.png"}
    proc = run_cli("bench", "--model", str(tiny_checkpoint), "--backend", "torch-fp32", "--prompt-tokens", "72",
                   "--new-tokens", "6", "--runs", "2", "--warmup", "1", "--threads", "2", "--bandwidth-mib", "16",
                   "--json", str(files["json"]), "--markdown", str(files["markdown"]), "--plot", str(files["plot"]),
                   "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {"proc": proc, "files": files, "report": json.loads(files["json"].read_text()), "dir": out}
