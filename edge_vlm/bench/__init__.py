"""Benchmarks: per-stage latency, memory, artifact sizes and the decode roofline, the same for every backend.

Layout: settings (what to measure) -> runner (machine facts, bandwidth, one worker process per backend) ->
worker (backends/, stage timers, RSS, energy) -> report / plot / compare (outputs), schema (the JSON contract).
Importing this package pulls in neither torch nor onnxruntime; only the worker processes do.
"""

from edge_vlm.bench.schema import SCHEMA, SCHEMA_VERSION, validate
from edge_vlm.bench.settings import BackendSpec, BenchSettings, parse_backends

__all__ = ["SCHEMA", "SCHEMA_VERSION", "BackendSpec", "BenchSettings", "parse_backends", "validate"]
