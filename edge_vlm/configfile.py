"""Reading the project's YAML files (training plans, benchmark scenarios, export target profiles) with one-line errors.

Every problem is one line that names the file: a file that is not UTF-8 text, YAML syntax errors as
`file:line:col: problem` (the compiler convention, so editors can jump there), a key given twice, and a number that
is not finite (`.nan`, `.inf`: no setting of this project means anything with them).
"""

from __future__ import annotations

import math
from pathlib import Path

from edge_vlm.errors import EdgeVLMError

# A plan or a scenario is a few KiB; anything far larger is the wrong file, refused before it is read into memory.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """The top-level mapping of a YAML file; an empty file is {}. `what` names the file in errors ("scenario", ...):
    a missing or unreadable file, bytes that are not UTF-8 text, a YAML error, a duplicate key, a number that is not
    finite, or a top level that is not a mapping raise EdgeVLMError naming the path."""
    path = Path(path)
    data = load_yaml(read_config_text(path, what), path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EdgeVLMError(f"{what} {path} must be a mapping of keys at the top level, got {type(data).__name__}")
    return data


def read_config_text(path: Path, what: str) -> str:
    """The file's text, or one line saying why it cannot be a text config file."""
    return read_text_file(path, what, MAX_CONFIG_BYTES, "YAML")


def read_text_file(path: str | Path, what: str, max_bytes: int | None = None, kind: str = "text") -> str:
    """A user's text file (`kind`: "YAML", "JSON", ...) as str, or one line naming the file and what is wrong: missing,
    not a regular file, larger than `max_bytes`, unreadable, binary, or not UTF-8."""
    path = Path(path)
    if not path.exists():
        raise EdgeVLMError(f"{what} not found: {path}")
    if not path.is_file():
        raise EdgeVLMError(f"{what} {path} is not a regular file")
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise EdgeVLMError(f"{what} {path} is {size:,} bytes, more than a config file's limit of "
                               f"{max_bytes:,}: is it the right file?")
        raw = path.read_bytes()
    except OSError as exc:
        raise EdgeVLMError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if b"\0" in raw:  # UTF-8 text never holds NUL; binary files nearly always do
        raise EdgeVLMError(f"{what} {path} is a binary file, not {kind} text")
    try:
        return raw.decode("utf-8-sig")  # -sig: a byte-order mark some editors write is not part of the text
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise EdgeVLMError(f"{path}:{line}: the {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                           f"{exc.start}); save it as UTF-8") from exc


def parse_json(text: str, path: str | Path, what: str, first_line: int = 1):
    """Strict JSON (NaN and Infinity are not JSON, though Python's reader takes them); errors are one line
    `path:line:col: problem`. `first_line`: the file's line that `text` starts on (JSON lines)."""
    import json

    def refuse(constant):
        raise ValueError(f"{constant} is not a JSON value")

    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        line = exc.lineno + first_line - 1
        raise EdgeVLMError(f"{path}:{line}:{exc.colno}: {exc.msg} (the {what} is not valid JSON)") from exc
    except (ValueError, RecursionError) as exc:
        where = path if "\n" in text.strip() else f"{path}:{first_line}"  # the line is known for one-line text
        raise EdgeVLMError(f"{where}: {exc} (in the {what})") from exc


def load_yaml(text: str, path: str | Path = "<text>", what: str = "YAML"):
    """Parse `text` with PyYAML's safe loader plus two checks (duplicate keys, non-finite numbers); errors are one
    line `path:line:col: problem`."""
    import yaml  # PyYAML is a core dependency, but importing it lazily keeps `edge-vlm --help` instant

    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise EdgeVLMError(f"{path}:{_where(exc.problem_mark)}: {_problem(exc)} (in the {what})") from exc
    except yaml.reader.ReaderError as exc:  # a character YAML forbids (control characters)
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise EdgeVLMError(f"{path}:{line}:{column}: character #x{exc.character:04x} is not allowed in YAML text "
                           f"(in the {what})") from exc
    except yaml.YAMLError as exc:
        raise EdgeVLMError(f"cannot parse the {what} {path}: {' '.join(str(exc).split())}") from exc


def _where(mark) -> str:
    # PyYAML's marks count from 0; editors and compilers count from 1
    return f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "?"


def _problem(exc) -> str:
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        where = f" started at {_where(exc.context_mark)}" if exc.context_mark is not None else ""
        problem += f" ({exc.context}{where})"
    return " ".join(problem.split())


_LOADER = None


def _strict_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently, so a
    forgotten earlier `lr:` would win unseen) and numbers that are not finite."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml
    from yaml.constructor import ConstructorError

    def finite(loader, node, key=None):
        value = yaml.SafeLoader.construct_yaml_float(loader, node)
        if not math.isfinite(value):
            name = f"{key}: " if key is not None else ""
            raise ConstructorError(None, None, f"{name}{node.value} is not a finite number", node.start_mark)
        return value

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, value_node in node.value:
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                        continue
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise ConstructorError(None, None, f"key {key!r} is given twice (first at line {seen[key]})",
                                               key_node.start_mark)
                    seen[key] = key_node.start_mark.line + 1
                    if isinstance(value_node, yaml.ScalarNode) and value_node.tag == _FLOAT_TAG:
                        finite(self, value_node, key)  # here the error can name the key
            return super().construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(_FLOAT_TAG, finite)
    _LOADER = StrictLoader
    return _LOADER
