"""`edge-vlm bench compare A.json B.json`: B relative to A, metric by metric, for the backends both measured."""

from __future__ import annotations

import json
from pathlib import Path

from edge_vlm.bench.schema import SCHEMA_ID, SCHEMA_VERSION, validate
from edge_vlm.errors import EdgeVLMError

# (label, path into a backend result, True when lower is better)
METRICS = [
    ("load_s", ("load_s",), True),
    ("peak_rss_bytes", ("memory", "peak_rss_bytes"), True),
    ("peak_gpu_bytes", ("memory", "peak_gpu_bytes"), True),
    ("preprocess_ms", ("stages", "preprocess_ms", "median"), True),
    ("vision_ms", ("stages", "vision_ms", "median"), True),
    ("prefill_ms", ("stages", "prefill_ms", "median"), True),
    ("prefill_tokens_per_s", ("prefill_tokens_per_s", "median"), False),
    ("ttft_ms", ("stages", "ttft_ms", "median"), True),
    ("decode_ms_p50", ("decode", "ms_per_token", "p50"), True),
    ("decode_ms_p99", ("decode", "ms_per_token", "p99"), True),
    ("decode_tokens_per_s", ("decode", "tokens_per_s"), False),
    ("percent_of_bound", ("roofline", "percent_of_bound"), False),
    ("joules_per_token", ("energy", "joules_per_token"), True),
    ("e2e_ms", ("stages", "e2e_ms", "median"), True),
]


def load_report(path: str | Path) -> dict:
    """Read and validate a report written by `edge-vlm bench --json`."""
    path = Path(path)
    if not path.is_file():
        raise EdgeVLMError(f"report not found: {path} (write one with `edge-vlm bench ... --json {path}`)")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgeVLMError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(report, dict) or report.get("schema") != SCHEMA_ID:
        raise EdgeVLMError(f"{path} is not an edge-vlm bench report (no \"schema\": \"{SCHEMA_ID}\")")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise EdgeVLMError(f"{path} has report schema version {report.get('schema_version')}; this edge-vlm reads "
                           f"version {SCHEMA_VERSION}: rerun the benchmark with this version")
    try:
        validate(report)
    except EdgeVLMError as exc:
        raise EdgeVLMError(f"{path}: {exc}") from exc
    return report


def _value(result: dict, keys: tuple[str, ...]):
    for key in keys:
        if not isinstance(result, dict) or result.get(key) is None:
            return None
        result = result[key]
    return result


def compare_reports(a: dict, b: dict) -> dict:
    """{'backends': {name: {metric: {'a', 'b', 'ratio', 'better'}}}, 'only_in_a', 'only_in_b', 'warnings'}.

    ratio = B / A. `better` says whether B improved on A for that metric (lower time / memory, higher speed).
    """
    ok_a = {r["name"]: r for r in a["backends"] if r.get("status") == "ok"}
    ok_b = {r["name"]: r for r in b["backends"] if r.get("status") == "ok"}
    out: dict = {"backends": {}, "only_in_a": sorted(set(ok_a) - set(ok_b)), "only_in_b": sorted(set(ok_b) - set(ok_a))}
    for name in [n for n in ok_a if n in ok_b]:
        rows = {}
        for label, keys, lower_better in METRICS:
            va, vb = _value(ok_a[name], keys), _value(ok_b[name], keys)
            if va is None or vb is None or va == 0:
                continue
            ratio = vb / va
            rows[label] = {"a": va, "b": vb, "ratio": ratio,
                           "better": (ratio < 1) if lower_better else (ratio > 1)}
        out["backends"][name] = rows
    warnings = []
    if a["random_weights"] != b["random_weights"]:
        warnings.append("one report is random weights and the other is not")
    if a["machine"]["cpu"]["model"] != b["machine"]["cpu"]["model"] or a["machine"]["gpus"] != b["machine"]["gpus"]:
        warnings.append("the reports come from different machines")
    for key in ("prompt_tokens", "new_tokens", "threads", "device"):
        if a["settings"].get(key) != b["settings"].get(key):
            warnings.append(f"settings differ: {key} {a['settings'].get(key)} vs {b['settings'].get(key)}")
    out["warnings"] = warnings
    return out


def render_comparison(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"B / A ratios (A = {name_a}, B = {name_b}); '+' marks where B is better"]
    lines += [f"warning: {w}" for w in result["warnings"]]
    for backend, rows in result["backends"].items():
        lines.append(f"\n{backend}")
        for label, row in rows.items():
            lines.append(f"  {label:22s} {row['a']:>14.4g} -> {row['b']:>14.4g}   x{row['ratio']:.3f} "
                         f"{'+' if row['better'] else ''}")
    if result["only_in_a"]:
        lines.append(f"\nonly in A: {', '.join(result['only_in_a'])}")
    if result["only_in_b"]:
        lines.append(f"only in B: {', '.join(result['only_in_b'])}")
    if not result["backends"]:
        lines.append("\nno backend was measured in both reports")
    return "\n".join(lines)
