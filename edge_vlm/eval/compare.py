"""Several checkpoints / bundles on the same benchmarks: each one's scores and the deltas against the first.

The quantization regression table (fp32 vs int8 vs int4) is this with the fp32 source first. The export gate
calls `compare_engines` with engines it already holds; the CLI calls `compare_sources` with directories, opening
one engine at a time so that only one model is in memory.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval.runner import EvalResult, check_results_folder, evaluate, resolve_aspect
from edge_vlm.fileio import json_object, read_head

# metric leaves that are sizes, not scores: left out of the detailed table
_COUNTS = {"count", "img_count", "images", "questions", "tp", "fp", "tn", "fn", "perception_tasks",
           "cognition_tasks"}


@dataclass
class Comparison:
    """results[label][benchmark] for every source, in the order given (the first is the reference)."""

    labels: list[str]
    benchmarks: list[str]
    results: dict[str, dict[str, EvalResult]] = field(default_factory=dict)

    def headline(self, label: str, benchmark: str) -> float | None:
        result = self.results.get(label, {}).get(benchmark)
        return None if result is None else result.headline_value

    def delta(self, label: str, benchmark: str) -> float | None:
        """Headline score of `label` minus the first source's (None where either is missing)."""
        value, reference = self.headline(label, benchmark), self.headline(self.labels[0], benchmark)
        return None if value is None or reference is None else value - reference

    def metrics(self, label: str, benchmark: str) -> dict[str, float]:
        result = self.results.get(label, {}).get(benchmark)
        return flatten_scores(result.scores) if result is not None and result.scores else {}

    def to_dict(self) -> dict:
        return {
            "reference": self.labels[0],
            "benchmarks": {
                bench: {
                    label: {
                        "metric": (self.results[label][bench].headline if bench in self.results.get(label, {})
                                   else None),
                        "score": self.headline(label, bench),
                        "delta": self.delta(label, bench),
                        "metrics": self.metrics(label, bench),
                    }
                    for label in self.labels
                }
                for bench in self.benchmarks
            },
        }

    def markdown(self, detail: bool = True) -> str:
        """The headline table (one column pair per benchmark), then per-benchmark metric tables if `detail`."""
        head = ["source"]
        for bench in self.benchmarks:
            metric = next((r[bench].headline for r in self.results.values() if bench in r and r[bench].headline),
                          "score")
            head += [f"{bench} {metric}", "Δ"]
        rows = []
        for label in self.labels:
            row = [label]
            for bench in self.benchmarks:
                row += [_fmt(self.headline(label, bench)), _fmt_delta(self.delta(label, bench), label == self.labels[0])]
            rows.append(row)
        parts = [_table(head, rows)]
        if detail:
            for bench in self.benchmarks:
                keys = sorted({k for label in self.labels for k in self.metrics(label, bench)})
                if not keys:
                    continue
                reference = self.metrics(self.labels[0], bench)
                table_rows = []
                for key in keys:
                    row = [key]
                    for label in self.labels:
                        value = self.metrics(label, bench).get(key)
                        row.append(_fmt(value))
                        if label != self.labels[0]:
                            ref = reference.get(key)
                            row.append(_fmt_delta(None if value is None or ref is None else value - ref, False))
                    table_rows.append(row)
                header = ["metric", self.labels[0]]
                for label in self.labels[1:]:
                    header += [label, "Δ"]
                parts.append(f"\n{bench}:\n\n" + _table(header, table_rows))
        return "\n".join(parts)


def flatten_scores(scores: dict, prefix: str = "", per_category: bool = False) -> dict[str, float]:
    """Numeric score leaves as dotted keys ('by_question_type.color'), sizes and notes left out. Inside a
    per-category map ('by_...') every number is a score, even under a name like 'count'."""
    flat: dict[str, float] = {}
    for key, value in scores.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if key.startswith("count"):
                continue
            flat.update(flatten_scores(value, f"{name}.", per_category="by_" in key))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if per_category or key not in _COUNTS:
                flat[name] = float(value)
    return flat


def compare_engines(engines: Mapping[str, object], benchmarks: str | Sequence[tuple[str, str | Path]],
                    data_dir: str | Path | None = None, *, limit: int | None = None,
                    max_new_tokens: int | None = None, out_root: str | Path | None = None,
                    progress: bool = False) -> Comparison:
    """Evaluate engines that are already open (e.g. the export gate's PyTorch model and its bundle).

    `benchmarks` is a benchmark name (with `data_dir`) or a list of (name, data_dir). Answers stay in memory
    unless `out_root` is given (then out_root/<label>/<benchmark>/, resumable).
    """
    pairs = _pairs(benchmarks, data_dir)
    if not engines:
        raise EdgeVLMError("nothing to compare: no engines given")
    comparison = Comparison(list(engines), [name for name, _ in pairs])
    for label, engine in engines.items():
        for name, data in pairs:
            out = Path(out_root) / label / name if out_root is not None else None
            result = evaluate(engine, name, data, out_dir=out, label=label, limit=limit,
                              max_new_tokens=max_new_tokens, progress=progress)
            comparison.results.setdefault(label, {})[name] = result
    return comparison


def compare_sources(sources, benchmarks: Sequence[tuple[str, str | Path]], out_root: str | Path, *,
                    open_kwargs: dict | None = None, **evaluate_kwargs) -> Comparison:
    """Evaluate each edge_vlm.eval.engines.Source in turn (one engine in memory at a time). Every benchmark's files
    are read first, so a bad --data fails before any model is loaded."""
    from edge_vlm.eval.benchmarks import get_benchmark
    from edge_vlm.eval.engines import check_source, open_engine

    question_file = evaluate_kwargs.pop("question_file", None)
    image_folder = evaluate_kwargs.pop("image_folder", None)
    datasets = {name: get_benchmark(name).load(data, question_file, image_folder) for name, data in benchmarks}
    # What evaluate() would refuse only after a model is loaded: refused before the first one is.
    limit = evaluate_kwargs.get("limit")
    if limit is not None and limit < 1:
        raise EdgeVLMError(f"--limit must be >= 1, got {limit}")
    for name, _ in benchmarks:
        resolve_aspect(get_benchmark(name), evaluate_kwargs.get("aspect", "auto"))
        for source in sources:
            check_results_folder(Path(out_root) / source.label / name)
    # Every source is checked before the first is evaluated: a damaged third bundle is refused now, not after
    # hours of answers from the first two.
    for source in sources:
        check_source(source)
    comparison = Comparison([s.label for s in sources], [name for name, _ in benchmarks])
    for source in sources:
        engine = open_engine(source, **{"verify": "size", **(open_kwargs or {})})  # hashed by check_source
        try:
            for name, data in benchmarks:
                result = evaluate(engine, name, data, out_dir=Path(out_root) / source.label / name,
                                  label=source.label, source=source.description, dataset=datasets[name],
                                  **evaluate_kwargs)
                comparison.results.setdefault(source.label, {})[name] = result
        finally:
            del engine
            gc.collect()
    return comparison


def comparison_files(out_root: str | Path, benchmarks: Sequence[str]) -> tuple[Path, Path]:
    """Where `eval --compare` writes its table: OUT/compare-<benchmarks>.md and .json."""
    stem = "compare-" + "-".join(benchmarks)
    return Path(out_root) / f"{stem}.md", Path(out_root) / f"{stem}.json"


def is_comparison_json(path: Path) -> bool:
    """A compare-*.json an earlier `eval --compare` wrote (Comparison.to_dict)."""
    data = json_object(path)
    return data is not None and isinstance(data.get("reference"), str) and isinstance(data.get("benchmarks"), dict)


def is_comparison_markdown(path: Path) -> bool:
    """A compare-*.md an earlier `eval --compare` wrote: Comparison.markdown's headline table comes first."""
    lines = read_head(path, 4096).decode("utf-8", errors="replace").splitlines()
    return len(lines) >= 2 and lines[0].startswith("| source | ") and set(lines[1]) == {"|", "-"}


def _pairs(benchmarks, data_dir) -> list[tuple[str, str | Path]]:
    if isinstance(benchmarks, str):
        if data_dir is None:
            raise EdgeVLMError("a benchmark name needs its data directory")
        return [(benchmarks, data_dir)]
    return [(name, data) for name, data in benchmarks]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _fmt_delta(value: float | None, reference: bool) -> str:
    if reference:
        return "—"
    return "n/a" if value is None else f"{value:+.2f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
