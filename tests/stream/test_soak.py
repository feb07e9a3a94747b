"""Soak: 5,000 synthetic frames, every one answered, through `edge-vlm stream`; memory must stay flat.
Slow (about 5 minutes on 2 cores): run with `pytest -m slow tests/stream/test_soak.py`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

BUILTIN = Path(__file__).resolve().parents[2] / "edge_vlm" / "assets" / "builtin"


def _asked_for(config) -> bool:
    # pyproject's default addopts do not deselect `slow`; this soak must never run unless asked for
    expression = config.getoption("markexpr") or ""
    return ("slow" in expression and "not slow" not in expression) or os.environ.get("EDGE_VLM_SOAK") == "1"


@pytest.mark.slow
def test_soak_5000_frames_keeps_memory_flat(request, tmp_path, cli):
    if not _asked_for(request.config):
        pytest.skip("the soak takes minutes: run it with -m slow (or EDGE_VLM_SOAK=1)")
    tiny_checkpoint = request.getfixturevalue("tiny_checkpoint")
    model = BUILTIN if (BUILTIN / "config.json").is_file() else tiny_checkpoint
    jsonl = tmp_path / "answers.jsonl"
    result = cli("stream", "--model", str(model), "--source", "synthetic:30", "--playback", "lossless",
                 "--max-frames", "5000", "--prompt", "What is moving?", "--max-new-tokens", "8",
                 "--jsonl", str(jsonl), "--quiet", timeout=3600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])["summary"]
    assert summary["answers"] == summary["frames_answered"] == 5000
    assert sum(1 for _ in jsonl.open()) == 5000
    # after the first 20 answers (allocator and caches warm), 4,980 more may not grow the process by 5 %+
    assert summary["rss_growth_mb"] < max(30.0, 0.05 * summary["rss_mb_warm"]), summary["rss_series"]
