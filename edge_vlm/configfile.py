"""Reading the project's YAML files (training plans, benchmark scenarios, export target profiles) with one-line errors."""

from __future__ import annotations

from pathlib import Path

from edge_vlm.errors import EdgeVLMError


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """The top-level mapping of a YAML file; an empty file is {}. `what` names the file in errors ("scenario", ...):
    a missing file, a parse error or a top level that is not a mapping raise EdgeVLMError naming the path."""
    import yaml  # PyYAML is a core dependency, but importing it lazily keeps `edge-vlm --help` instant

    path = Path(path)
    if not path.is_file():
        raise EdgeVLMError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EdgeVLMError(f"cannot parse the {what} {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EdgeVLMError(f"{what} {path} must be a mapping of keys at the top level, got {type(data).__name__}")
    return data
