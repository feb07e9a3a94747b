"""Summaries of repeated timings: medians across runs, percentiles across decode steps."""

from __future__ import annotations

import numpy as np


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default, 'linear')."""
    if not values:
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(values: list[float]) -> dict:
    """{'median', 'min', 'max', 'runs'} of one stage's per-run values."""
    return {
        "median": percentile(values, 50),
        "min": float(min(values)),
        "max": float(max(values)),
        "runs": [float(v) for v in values],
    }


def decode_summary(step_ms: list[list[float]]) -> dict:
    """Per-token decode latency over every step of every run, and the throughput of each run (median of runs).

    tokens/s of a run = steps / total decode time of that run, so one slow step counts as much as it cost.
    """
    pooled = [ms for run in step_ms for ms in run]
    per_run = [len(run) / (sum(run) / 1e3) for run in step_ms if run]
    return {
        "ms_per_token": {
            "p50": percentile(pooled, 50),
            "p90": percentile(pooled, 90),
            "p99": percentile(pooled, 99),
            "mean": float(np.mean(pooled)),
        },
        "tokens_per_s": percentile(per_run, 50),
        "tokens_per_s_runs": per_run,
        "steps_per_run": len(step_ms[0]) if step_ms else 0,
    }
