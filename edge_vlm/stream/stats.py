"""The run's figures: answers per second, frame age at answer (p50 / p95), drop rate, latencies.

`RunStats` accumulates them while the loop runs, in bounded windows (the last `window` answers) so that a
days-long run keeps flat memory; counts are exact over the whole run."""

from __future__ import annotations

from collections import deque

import numpy as np


def percentile(values, q: float) -> float | None:
    """The q-th percentile (linear interpolation, numpy's default), None for no values."""
    values = list(values)
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


class RunStats:
    """Counts and latency windows of a stream run."""

    def __init__(self, window: int = 100_000):
        self.answers = 0
        self.frames_answered = 0
        self.one_shot_answers = 0
        self._last_frame: int | None = None
        self.frame_age_ms: deque = deque(maxlen=window)
        self.start_age_ms: deque = deque(maxlen=window)
        self.prepare_ms: deque = deque(maxlen=window)
        self.first_token_ms: deque = deque(maxlen=window)

    def add(self, result) -> None:
        row = result if isinstance(result, dict) else result.to_dict()
        self.answers += 1
        self.one_shot_answers += bool(row.get("one_shot"))
        self.frame_age_ms.append(row["frame_age_ms"])
        if row["first_token_ms"] is not None:
            self.first_token_ms.append(row["first_token_ms"])
        if row["frame_seq"] != self._last_frame:  # the first answer about a frame carries its per-frame figures
            self._last_frame = row["frame_seq"]
            self.frames_answered += 1
            self.start_age_ms.append(row["start_age_ms"])
            self.prepare_ms.append(row["prepare_ms"])

    def summary(self, source_stats: dict, elapsed_s: float, extra: dict | None = None) -> dict:
        """drop_rate = 1 - frames answered / frames captured: the share of frames the model never looked at."""
        captured = int(source_stats.get("captured", 0))

        def per_s(count):
            return count / elapsed_s if elapsed_s > 0 else None

        summary = {
            "answers": self.answers,
            "one_shot_answers": self.one_shot_answers,
            "frames_answered": self.frames_answered,
            "frames_captured": captured,
            "frames_dropped": max(0, captured - self.frames_answered),
            "drop_rate": (1.0 - self.frames_answered / captured) if captured else None,
            "elapsed_s": elapsed_s,
            "answers_per_s": per_s(self.answers),
            "frames_answered_per_s": per_s(self.frames_answered),
            "capture_fps": per_s(captured),
            "frame_age_ms_p50": percentile(self.frame_age_ms, 50),
            "frame_age_ms_p95": percentile(self.frame_age_ms, 95),
            "start_age_ms_p50": percentile(self.start_age_ms, 50),
            "start_age_ms_p95": percentile(self.start_age_ms, 95),
            "first_token_ms_p50": percentile(self.first_token_ms, 50),
            "prepare_ms_p50": percentile(self.prepare_ms, 50),
            "source_errors": int(source_stats.get("errors", 0)),
            "source_reconnects": int(source_stats.get("reconnects", 0)),
            "bad_frames": int(source_stats.get("bad_frames", 0)),  # undecodable, skipped
        }
        summary.update(extra or {})
        return summary


def summarize(results, source_stats: dict, elapsed_s: float, extra: dict | None = None) -> dict:
    """Figures of a finished run from its StreamResults (or their dicts, e.g. read back from JSONL)."""
    stats = RunStats()
    for result in results:
        stats.add(result)
    return stats.summary(source_stats, elapsed_s, extra)


def format_summary(summary: dict) -> str:
    """A few human lines for the end of `edge-vlm stream`."""

    def ms(key):
        value = summary.get(key)
        return "-" if value is None else f"{value:.0f} ms"

    rate = summary.get("answers_per_s")
    drop = summary.get("drop_rate")
    return (
        f"{summary['answers']} answers about {summary['frames_answered']} of {summary['frames_captured']} frames in "
        f"{summary['elapsed_s']:.1f} s ({'-' if rate is None else f'{rate:.2f}'} answers/s, drop rate "
        f"{'-' if drop is None else f'{drop:.1%}'})\n"
        f"frame age at answer p50 {ms('frame_age_ms_p50')}, p95 {ms('frame_age_ms_p95')}; at inference start p50 "
        f"{ms('start_age_ms_p50')}; first token p50 {ms('first_token_ms_p50')}; prepare p50 {ms('prepare_ms_p50')}; "
        f"source errors {summary['source_errors']}, reconnects {summary['source_reconnects']}, undecodable frames "
        f"skipped {summary.get('bad_frames', 0)}"
    )


class RssMonitor:
    """Resident memory of this process over a run: after warm-up, at the end, the peak of the samples, and a
    bounded series (one sample every `every` answers) so that a soak shows whether memory stays flat."""

    def __init__(self, warmup_answers: int = 20, every: int = 100, keep: int = 200):
        import psutil

        self._process = psutil.Process()
        self.warmup_answers = warmup_answers
        self.every = every
        self.start_mb = self._mb()
        self.warm_mb: float | None = None
        self.max_mb = self.start_mb
        self.series: deque = deque(maxlen=keep)

    def _mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def sample(self, answers: int) -> None:
        """Call after each answer with the count so far."""
        if answers == self.warmup_answers or (self.warm_mb is None and answers > self.warmup_answers):
            self.warm_mb = self._mb()
        if answers % self.every == 0:
            mb = self._mb()
            self.max_mb = max(self.max_mb, mb)
            self.series.append([answers, round(mb, 1)])

    def summary(self) -> dict:
        end = self._mb()
        warm = self.warm_mb if self.warm_mb is not None else self.start_mb
        return {"rss_mb_start": round(self.start_mb, 1), "rss_mb_warm": round(warm, 1),
                "rss_mb_end": round(end, 1), "rss_mb_max": round(max(self.max_mb, end), 1),
                "rss_growth_mb": round(end - warm, 1), "rss_warmup_answers": self.warmup_answers,
                "rss_series": list(self.series)}
