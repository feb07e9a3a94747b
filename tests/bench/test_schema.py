"""The report schema: the validator rejects what it must, the written schema file is the one in the code, and (when
the `jsonschema` package is installed) an independent validator agrees."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edge_vlm.bench.schema import SCHEMA, validate, validation_errors
from edge_vlm.errors import EdgeVLMError

REPO = Path(__file__).resolve().parents[2]

SMALL = {
    "type": "object",
    "required": ["a", "b"],
    "properties": {
        "a": {"type": "integer", "minimum": 1},
        "b": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/x"}, {"type": "null"}]}},
        "c": {"enum": ["p", "q"]},
        "d": {"type": "object", "additionalProperties": False, "properties": {"e": {"const": 3}}},
    },
    "$defs": {"x": {"type": "object", "required": ["v"], "properties": {"v": {"type": ["number", "null"]}}}},
}


def test_validator_on_hand_written_cases():
    assert validation_errors({"a": 1, "b": [{"v": 1.5}, None, {"v": None}], "c": "p", "d": {"e": 3}}, SMALL) == []
    cases = {
        "missing": ({"a": 1}, "missing required field 'b'"),
        "type": ({"a": "1", "b": []}, "$.a: expected integer"),
        "bool is not an integer": ({"a": True, "b": []}, "$.a: expected integer"),
        "minimum": ({"a": 0, "b": []}, "below the minimum"),
        "anyOf": ({"a": 1, "b": [{"w": 1}]}, "$.b[0]: matches none"),
        "enum": ({"a": 1, "b": [], "c": "z"}, "is not one of"),
        "additional": ({"a": 1, "b": [], "d": {"f": 1}}, "unexpected field 'f'"),
        "const": ({"a": 1, "b": [], "d": {"e": 4}}, "must be 3"),
    }
    for name, (document, expected) in cases.items():
        errors = validation_errors(document, SMALL)
        assert any(expected in e for e in errors), (name, errors)


def test_unknown_keywords_are_refused_not_ignored():
    with pytest.raises(ValueError, match="pattern"):
        validation_errors("x", {"type": "string", "pattern": "^x$"})


def test_schema_file_matches_the_code():
    written = json.loads((REPO / "benchmarks" / "schema" / "bench-v1.schema.json").read_text())
    assert written == SCHEMA


def test_recorded_results_are_valid():
    results = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    for path in results:
        validate(json.loads(path.read_text()))


def test_report_errors_name_the_field(bench_run):
    report = copy.deepcopy(bench_run["report"])
    del report["backends"][0]["stages"]["vision_ms"]
    report["backends"][0]["decode"]["tokens_per_s"] = "fast"
    with pytest.raises(EdgeVLMError, match="vision_ms|tokens_per_s"):
        validate(report)


def test_an_independent_validator_agrees(bench_run):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (not a project dependency)")
    jsonschema.Draft202012Validator(SCHEMA).validate(bench_run["report"])
