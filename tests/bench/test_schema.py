"""The report schema: shipped as one file, validated by jsonschema, and every recorded result and a fresh run match it;
a broken report is refused."""

from __future__ import annotations

import copy
import json
from importlib import resources
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


def test_validation_errors_name_the_path():
    """The errors say where the document is wrong (the validation itself is jsonschema's)."""
    assert validation_errors({"a": 1, "b": [{"v": 1.5}, None, {"v": None}], "c": "p", "d": {"e": 3}}, SMALL) == []
    cases = {
        "missing": ({"a": 1}, "$: 'b' is a required property"),
        "type": ({"a": "1", "b": []}, "$.a: '1' is not of type 'integer'"),
        "minimum": ({"a": 0, "b": []}, "$.a: 0 is less than the minimum of 1"),
        "additional": ({"a": 1, "b": [], "d": {"f": 1}}, "$.d: Additional properties are not allowed"),
    }
    for name, (document, expected) in cases.items():
        errors = validation_errors(document, SMALL)
        assert any(e.startswith(expected) for e in errors), (name, errors)


def test_the_schema_is_shipped_with_the_package_and_printed(capsys):
    from edge_vlm.cli.main import main

    assert main(["bench", "--print-schema"]) == 0
    assert json.loads(capsys.readouterr().out) == SCHEMA
    shipped = json.loads(resources.files("edge_vlm.bench").joinpath("bench-v1.schema.json").read_text())
    assert shipped == SCHEMA and shipped["$id"] == "urn:edge-vlm:bench-report:v1"


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
