"""Where the time goes inside ONNX Runtime: its own profiler's per-node timings, summed per operator type.

`--profile DIR` re-runs each onnxruntime backend once more with profiling on (a separate pass, so the profiler's
per-node bookkeeping never touches the reported timings) and summarises the JSON files ORT writes: per session
(vision, decoder), per phase (the decoder's prefill call vs its one-token decode calls), milliseconds per call by
operator (MatMulNBits, GroupQueryAttention, ...), largest first.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from pathlib import Path


@contextlib.contextmanager
def ort_profiling(prefix: str):
    """While active, every session the runtime creates writes an ONNX Runtime profile starting with `prefix`.

    The runtime builds its session options in edge_vlm.runtime.providers.session_options; this wraps that function
    rather than copying the engine's setup, so the profiled sessions are the ones the benchmark measures.
    """
    from edge_vlm.runtime import providers

    original = providers.session_options

    def with_profiling(threads=None):
        options = original(threads)
        options.enable_profiling = True
        options.profile_file_prefix = prefix
        return options

    providers.session_options = with_profiling
    try:
        yield
    finally:
        providers.session_options = original


def _by_op(nodes: list[dict], calls: int, top: int) -> dict:
    totals: dict[str, float] = defaultdict(float)
    for node in nodes:
        totals[node.get("args", {}).get("op_name", "?")] += node["dur"] / 1e3
    total = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return {op: {"ms_per_call": ms / max(calls, 1), "percent": 100.0 * ms / total} for op, ms in ranked}


def summarize_profile(path: str | Path, phases: list[str] | None = None, top: int = 12) -> dict:
    """Per-operator time of one session's profile. `phases` names each model run in order (e.g. 'prefill',
    'decode', 'decode', ...); runs beyond the list take the last name; None puts every run in 'run'."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    grouped: dict[str, dict] = {}
    cursor = 0
    for index, run in enumerate(runs):
        name = (phases[min(index, len(phases) - 1)] if phases else "run")
        bucket = grouped.setdefault(name, {"calls": 0, "run_ms": 0.0, "nodes": []})
        bucket["calls"] += 1
        bucket["run_ms"] += run["dur"] / 1e3
        end = run["ts"] + run["dur"]
        while cursor < len(nodes) and nodes[cursor]["ts"] < run["ts"]:
            cursor += 1
        while cursor < len(nodes) and nodes[cursor]["ts"] <= end:
            bucket["nodes"].append(nodes[cursor])
            cursor += 1
    return {
        name: {
            "calls": b["calls"],
            "ms_per_call": b["run_ms"] / b["calls"],
            "kernel_ms_per_call": sum(n["dur"] for n in b["nodes"]) / 1e3 / b["calls"],
            "by_op": _by_op(b["nodes"], b["calls"], top),
        }
        for name, b in grouped.items()
    }


def decoder_phases(queries: int, new_tokens: int) -> list[str]:
    """The decoder's model runs of `queries` benchmark queries: one prefill, then `new_tokens` decode steps each."""
    return (["prefill"] + ["decode"] * new_tokens) * queries


def render_profile(name: str, profile: dict) -> list[str]:
    """A few lines per session and phase: the heaviest operators with their share of kernel time."""
    lines = []
    for session, phases in profile.get("sessions", {}).items():
        for phase, data in phases.items():
            ops = ", ".join(f"{op} {v['ms_per_call']:.1f} ms ({v['percent']:.0f}%)"
                            for op, v in list(data["by_op"].items())[:5])
            lines.append(f"{name} profile {session}/{phase}: {data['ms_per_call']:.1f} ms per call; {ops}")
    return lines
