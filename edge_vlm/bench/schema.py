"""The versioned JSON Schema of a benchmark report (draft 2020-12) and its validation. Torch-free.

The schema lives in one place, `bench-v1.schema.json` beside this module (shipped as package data; printed by
`edge-vlm bench --print-schema`). Bump SCHEMA_VERSION (and the file's name) whenever a field changes meaning or a
required field is added; `edge-vlm bench compare` refuses reports of another major version. Validation is done by
the `jsonschema` package.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from edge_vlm.errors import EdgeVLMError

SCHEMA_VERSION = 1
SCHEMA_ID = "edge-vlm-bench"
SCHEMA_FILE = f"bench-v{SCHEMA_VERSION}.schema.json"


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(resources.files("edge_vlm.bench").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


SCHEMA: dict = _schema()


def validation_errors(document, schema: dict | None = None) -> list[str]:
    """Every violation of `schema` (default: SCHEMA) in `document`, as 'path: problem' strings ([] when valid)."""
    from edge_vlm.deps import require

    jsonschema = require("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMA if schema is None else schema)
    return [f"{error.json_path}: {error.message}"
            for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))]


def validate(document, schema: dict | None = None) -> None:
    """Raise EdgeVLMError listing the first problems when `document` does not match the schema."""
    errors = validation_errors(document, schema)
    if errors:
        shown = "; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")
        raise EdgeVLMError(f"the benchmark report does not match schema v{SCHEMA_VERSION}: {shown}")
