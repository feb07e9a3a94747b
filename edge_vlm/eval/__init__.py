"""The paper's benchmarks (docs/evaluation.md): prompts, official answer formats and scorers, a resumable runner.

    from edge_vlm.eval import evaluate, compare_engines
    result = evaluate(engine, "pope", "playground/data/eval/pope", out_dir="eval-results/fp32/pope")
    table = compare_engines({"fp32": torch_engine, "int4": bundle_engine}, "synth", "data/synth").markdown()

Torch-free: the engine passed in decides the backend.
"""

from __future__ import annotations

from edge_vlm.eval.benchmarks import BENCHMARKS, get_benchmark
from edge_vlm.eval.compare import Comparison, compare_engines, compare_sources
from edge_vlm.eval.runner import EvalResult, evaluate

__all__ = ["BENCHMARKS", "Comparison", "EvalResult", "compare_engines", "compare_sources", "evaluate",
           "get_benchmark"]
