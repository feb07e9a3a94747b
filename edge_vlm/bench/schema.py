"""The versioned JSON Schema of a benchmark report, and a small validator for it. Torch-free.

`SCHEMA` is JSON Schema (draft 2020-12); benchmarks/schema/bench-v1.schema.json is the same document written out
(`edge-vlm bench --print-schema`; a test keeps the two equal). Bump SCHEMA_VERSION whenever a field changes
meaning or a required field is added; `edge-vlm bench compare` refuses reports of another major version.

The validator is hand-written because `jsonschema` is not a dependency of this project (and is not installed in
its environment); it implements the keywords SCHEMA uses: type, properties, required, additionalProperties, items,
enum, const, minimum, anyOf, $ref to #/$defs. Anything else in a schema is an error, not silently ignored.
"""

from __future__ import annotations

from edge_vlm.errors import EdgeVLMError

SCHEMA_VERSION = 1
SCHEMA_ID = "edge-vlm-bench"

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}
_STAGE = {
    "type": "object",
    "required": ["median", "min", "max", "runs"],
    "properties": {"median": _NUM, "min": _NUM, "max": _NUM, "runs": {"type": "array", "items": _NUM}},
}
_LOAD = {"type": ["array", "null"], "items": _NUM}

SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:edge-vlm:bench-report:v1",
    "title": "edge-vlm bench report",
    "type": "object",
    "required": ["schema", "schema_version", "created", "command", "random_weights", "label", "settings", "machine",
                 "versions", "load_average", "bandwidth", "backends"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"const": SCHEMA_VERSION},
        "created": {"type": "string"},
        "command": {"type": "string"},
        "random_weights": {"type": "boolean"},
        "label": {"type": "string"},
        "settings": {
            "type": "object",
            "required": ["backends", "prompt_tokens", "new_tokens", "runs", "warmup", "threads", "device"],
            "properties": {
                "backends": {"type": "array", "items": {"type": "string"}},
                "prompt_tokens": {"type": "integer", "minimum": 1},
                "new_tokens": {"type": "integer", "minimum": 1},
                "runs": {"type": "integer", "minimum": 1},
                "warmup": {"type": "integer", "minimum": 0},
                "threads": _INT_OR_NULL,
                "device": {"enum": ["cpu", "cuda"]},
            },
        },
        "machine": {
            "type": "object",
            "required": ["cpu", "memory", "gpus"],
            "properties": {
                "cpu": {"type": "object", "required": ["model", "avx512", "simd_flags"],
                        "properties": {"avx512": {"type": "boolean"}}},
                "gpus": {"type": "array", "items": {"type": "object"}},
            },
        },
        "versions": {"type": "object", "required": ["python"]},
        "load_average": {"type": "object", "required": ["before", "after"],
                         "properties": {"before": _LOAD, "after": _LOAD}},
        "bandwidth": {
            "type": "object",
            "required": ["cpu"],
            "additionalProperties": {"$ref": "#/$defs/bandwidth"},
        },
        "backends": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/backend_ok"},
                                                          {"$ref": "#/$defs/backend_error"}]}},
    },
    "$defs": {
        "bandwidth": {
            "type": "object",
            "required": ["device", "used_gb_s"],
            "properties": {"device": {"enum": ["cpu", "cuda"]}, "used_gb_s": _NUM_OR_NULL,
                           "read_gb_s": _NUM, "copy_gb_s": _NUM, "nominal_gb_s": _NUM_OR_NULL,
                           "method": {"type": "string"}},
        },
        "backend_error": {
            "type": "object",
            "required": ["name", "status", "error"],
            "properties": {"name": {"type": "string"}, "status": {"const": "error"}, "error": {"type": "string"}},
        },
        "backend_ok": {
            "type": "object",
            "required": ["name", "family", "precision", "device", "status", "random_weights", "info", "import_s",
                         "load_s", "memory", "stages", "prefill_tokens_per_s", "decode", "decode_bytes", "energy",
                         "roofline", "tokens", "load_average"],
            "properties": {
                "name": {"type": "string"},
                "family": {"enum": ["torch", "ort"]},
                "precision": {"enum": ["fp32", "bf16", "fp16", "int8", "nf4", "int4"]},
                "device": {"enum": ["cpu", "cuda"]},
                "status": {"const": "ok"},
                "random_weights": {"type": "boolean"},
                "info": {"type": "object", "required": ["library", "versions", "artifacts", "random_weights"]},
                "import_s": _NUM,
                "load_s": _NUM,
                "memory": {
                    "type": "object",
                    "required": ["peak_rss_bytes", "rss_after_load_bytes", "peak_gpu_bytes"],
                    "properties": {"peak_rss_bytes": _INT_OR_NULL, "rss_after_load_bytes": {"type": "integer"},
                                   "peak_gpu_bytes": _INT_OR_NULL},
                },
                "stages": {
                    "type": "object",
                    "required": ["preprocess_ms", "vision_ms", "prefill_ms", "ttft_ms", "decode_ms", "e2e_ms"],
                    "additionalProperties": _STAGE,
                },
                "prefill_tokens_per_s": _STAGE,
                "decode": {
                    "type": "object",
                    "required": ["ms_per_token", "tokens_per_s", "steps_per_run"],
                    "properties": {
                        "ms_per_token": {"type": "object", "required": ["p50", "p90", "p99", "mean"],
                                         "additionalProperties": _NUM},
                        "tokens_per_s": _NUM,
                        "steps_per_run": {"type": "integer", "minimum": 1},
                        "samples_ms": {"type": "array", "items": {"type": "array", "items": _NUM}},
                    },
                },
                "decode_bytes": {"$ref": "#/$defs/decode_bytes"},
                "energy": {
                    "type": "object",
                    "required": ["available"],
                    "properties": {"available": {"type": "boolean"}, "joules_per_token": _NUM,
                                   "mean_power_w": _NUM, "reason": {"type": "string"}},
                },
                "roofline": {
                    "type": "object",
                    "required": ["bytes_per_token", "bandwidth_gb_s", "bound_tokens_per_s", "percent_of_bound"],
                    "properties": {"bytes_per_token": {"$ref": "#/$defs/decode_bytes"},
                                   "bandwidth_gb_s": _NUM_OR_NULL, "bound_tokens_per_s": _NUM_OR_NULL,
                                   "percent_of_bound": _NUM_OR_NULL},
                },
                "tokens": {"type": "array", "items": {"type": "integer"}},
                "prompt": {"type": "string"},
                "profile": {"type": "object"},
            },
        },
        "decode_bytes": {
            "type": "object",
            "required": ["matmul_weights", "lm_head", "vectors", "embedding_row", "kv_cache", "context", "source",
                         "total"],
            "properties": {"matmul_weights": {"type": "integer", "minimum": 0}, "lm_head": {"type": "integer"},
                           "vectors": {"type": "integer"}, "embedding_row": {"type": "integer"},
                           "kv_cache": {"type": "integer"}, "context": _NUM, "source": {"type": "string"},
                           "total": {"type": "integer", "minimum": 1}},
        },
    },
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}
_KEYWORDS = {"$schema", "$id", "$defs", "title", "description", "type", "properties", "required",
             "additionalProperties", "items", "enum", "const", "minimum", "anyOf", "$ref"}


def validation_errors(document, schema: dict | None = None) -> list[str]:
    """Every violation of `schema` (default: SCHEMA) in `document`, as 'path: problem' strings ([] when valid)."""
    root = SCHEMA if schema is None else schema
    errors: list[str] = []
    _check(document, root, root, "$", errors)
    return errors


def validate(document, schema: dict | None = None) -> None:
    """Raise EdgeVLMError listing the first problems when `document` does not match the schema."""
    errors = validation_errors(document, schema)
    if errors:
        shown = "; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")
        raise EdgeVLMError(f"the benchmark report does not match schema v{SCHEMA_VERSION}: {shown}")


def _check(value, schema: dict, root: dict, path: str, errors: list[str]) -> None:
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise ValueError(f"schema keyword(s) {sorted(unknown)} at {path} are not implemented by this validator")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"only local #/$defs/ references are supported, got {ref}")
        _check(value, root["$defs"][ref[len("#/$defs/"):]], root, path, errors)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{path}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
    if "anyOf" in schema:
        branches = []
        for option in schema["anyOf"]:
            branch: list[str] = []
            _check(value, option, root, path, branch)
            if not branch:
                break
            branches.append(branch)
        else:
            closest = min(branches, key=len)
            errors.append(f"{path}: matches none of the allowed forms; closest: {'; '.join(closest[:3])}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required field {key!r}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], root, f"{path}.{key}", errors)
            elif extra is False:
                errors.append(f"{path}: unexpected field {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{path}.{key}", errors)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], root, f"{path}[{index}]", errors)
