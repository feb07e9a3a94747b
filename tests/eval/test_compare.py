"""Comparison table and deltas (what `--compare` prints and the export gate calls)."""

from __future__ import annotations

import pytest

from edge_vlm.eval import compare_engines
from edge_vlm.eval.compare import flatten_scores
from tests.eval import layouts
from tests.eval.layouts import ScriptedEngine

RIGHT = {"color": "red", "red square": "yes", "circles": "2"}


def test_deltas_against_the_first_engine(tmp_path):
    data = layouts.synth(tmp_path / "synth")
    engines = {"fp32": ScriptedEngine(RIGHT), "int4": ScriptedEngine({**RIGHT, "color": "blue"})}
    comparison = compare_engines(engines, "synth", data)
    assert comparison.headline("fp32", "synth") == pytest.approx(100)
    assert comparison.headline("int4", "synth") == pytest.approx(200 / 3)
    assert comparison.delta("int4", "synth") == pytest.approx(-100 / 3)
    assert comparison.delta("fp32", "synth") == 0
    table = comparison.markdown()
    assert "| source | synth accuracy | Δ |" in table
    assert "| fp32 | 100.00 | — |" in table and "| int4 | 66.67 | -33.33 |" in table
    assert "| by_question_type.color | 100.00 | 0.00 | -100.00 |" in table
    data_out = comparison.to_dict()
    assert data_out["reference"] == "fp32"
    assert data_out["benchmarks"]["synth"]["int4"]["metrics"]["by_question_type.count"] == 100.0


def test_several_benchmarks_and_missing_scores(tmp_path):
    pairs = [("synth", layouts.synth(tmp_path / "synth")), ("mmvet", layouts.mmvet(tmp_path / "mm-vet"))]
    comparison = compare_engines({"a": ScriptedEngine(RIGHT), "b": ScriptedEngine(RIGHT)}, pairs)
    assert comparison.headline("a", "mmvet") is None and comparison.delta("b", "mmvet") is None
    assert "| b | 100.00 | +0.00 | n/a | n/a |" in comparison.markdown(detail=False)


def test_flatten_keeps_scores_and_drops_sizes():
    scores = {"accuracy": 50.0, "count": 4, "splits": {"random": {"f1": 80.0, "tp": 3}},
              "by_question_type": {"count": 25.0}, "count_by_question_type": {"count": 2}, "note": "text"}
    assert flatten_scores(scores) == {"accuracy": 50.0, "splits.random.f1": 80.0, "by_question_type.count": 25.0}
