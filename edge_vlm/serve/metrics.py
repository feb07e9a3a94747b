"""`GET /metrics`: Prometheus text from prometheus-client, in a registry of the server's own (not the process-global
one, so two servers in one process, as in the tests, do not share counts)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# no `*_created` timestamp series beside every counter: they double the page and no dashboard here reads them
disable_created_metrics()

# seconds: from a cached-prefix decode step of the built-in model (~1 ms) to a full-size CPU prefill (minutes)
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STAGES = ("queue", "preprocess", "vision", "prefix_prefill", "prefill", "decode", "total")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, queue_depth=None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edge_vlm_http_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.queue_depth = Gauge("edge_vlm_queue_depth", "requests waiting for the model", registry=r)
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)
        self.stage = Histogram("edge_vlm_stage_seconds", "latency of each stage of an answered request",
                               ["stage"], buckets=_BUCKETS, registry=r)
        self.prompt_tokens = Counter("edge_vlm_prompt_tokens", "prompt tokens of answered requests", registry=r)
        self.completion_tokens = Counter("edge_vlm_completion_tokens", "generated tokens of answered requests",
                                         registry=r)
        self.tokens_per_s = Gauge("edge_vlm_decode_tokens_per_second", "decode speed of the last answer",
                                  registry=r)
        self.image_cache = Counter("edge_vlm_image_prefix_cache", "image prefix cache lookups of requests with an "
                                   "image", ["result"], registry=r)
        self.outcomes = Counter("edge_vlm_requests_ended", "requests that ended without an answer, by reason",
                                ["reason"], registry=r)
        self.stream_answers = Counter("edge_vlm_stream_answers", "answers of the live stream (--source)",
                                      registry=r)
        self.stream_frame_age = Histogram("edge_vlm_stream_frame_age_seconds", "age of the frame when the live "
                                          "stream's answer was complete", buckets=_BUCKETS, registry=r)

    def answered(self, info: dict) -> None:
        """A finished answer (called on the worker thread; prometheus-client is thread-safe)."""
        timings = info["timings_ms"]
        for stage in STAGES:
            value = timings.get(f"{stage}_ms")
            if value is not None and not (info["image_cached"] and stage in ("preprocess", "vision",
                                                                            "prefix_prefill")):
                self.stage.labels(stage).observe(value / 1e3)
        self.prompt_tokens.inc(info["prompt_tokens"])
        self.completion_tokens.inc(info["completion_tokens"])
        if info.get("tokens_per_s"):
            self.tokens_per_s.set(info["tokens_per_s"])
        if info.get("had_image"):
            self.image_cache.labels("hit" if info["image_cached"] else "miss").inc()

    def outcome(self, reason: str) -> None:
        self.outcomes.labels(reason).inc()

    def stream_answer(self, frame_age_ms: float) -> None:
        self.stream_answers.inc()
        self.stream_frame_age.observe(frame_age_ms / 1e3)

    def render(self) -> bytes:
        return generate_latest(self.registry)
