"""The benchmarks of the paper's Table 1 (plus GQA and the synthetic world), by name."""

from __future__ import annotations

from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval.benchmarks.base import Benchmark, Dataset, EvalItem, ImageRef
from edge_vlm.eval.benchmarks.gqa import GQA
from edge_vlm.eval.benchmarks.mmbench import MMBench
from edge_vlm.eval.benchmarks.mme import MME
from edge_vlm.eval.benchmarks.mmvet import MMVet
from edge_vlm.eval.benchmarks.pope import POPE
from edge_vlm.eval.benchmarks.sqa import ScienceQA
from edge_vlm.eval.benchmarks.synth import Synth
from edge_vlm.eval.benchmarks.vqa import TextVQA, VizWiz, VQAv2

BENCHMARKS: dict[str, type[Benchmark]] = {
    cls.name: cls for cls in (ScienceQA, POPE, MME, VQAv2, GQA, TextVQA, VizWiz, MMBench, MMVet, Synth)
}


def get_benchmark(name: str) -> Benchmark:
    """A benchmark by its short name (see BENCHMARKS)."""
    key = name.lower()
    if key not in BENCHMARKS:
        raise EdgeVLMError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]()


__all__ = ["BENCHMARKS", "Benchmark", "Dataset", "EvalItem", "ImageRef", "get_benchmark"]
