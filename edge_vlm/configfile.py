"""Reading the project's YAML files (training plans, benchmark scenarios, export target profiles) and users' JSON files
(training data, benchmark questions) with one-line errors.

Every problem is one line that names the file: a path that is not a regular file (a FIFO, a device), a file over its
size bound (MAX_CONFIG_BYTES, MAX_TEXT_BYTES), a file that is not UTF-8 text, JSON that is not strict JSON, YAML
syntax errors as `file:line:col: problem` (the compiler convention, so editors can jump there), a key given twice,
and a number that is not finite (`.nan`, `.inf`: no setting of this project means anything with them).
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from edge_vlm.errors import EdgeVLMError

# A plan or a scenario is a few KiB; anything far larger is the wrong file, refused before it is read into memory.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Any other text file (a training data file, a benchmark's questions) is refused above 2 GiB before it is read: twice
# the largest public LLaVA data file (llava_v1_5_mix665k.json, about 1 GB), while a file of that size already takes
# several times as much memory once parsed.
MAX_TEXT_BYTES = 2 * 1024**3
_LIMIT_NAMES = {MAX_CONFIG_BYTES: "a config file's limit", MAX_TEXT_BYTES: "a data file's limit"}
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
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
    not a regular file (a folder, a FIFO, a device: refused before a byte is read, so `/dev/zero` cannot fill the
    memory and a FIFO cannot block), larger than `max_bytes` (default MAX_TEXT_BYTES), unreadable, binary, or not
    UTF-8."""
    path = Path(path)
    limit = MAX_TEXT_BYTES if max_bytes is None else max_bytes
    raw = _read_regular_file(path, what, limit)
    if b"\0" in raw:  # UTF-8 text never holds NUL; binary files nearly always do
        raise EdgeVLMError(f"{what} {path} is a binary file, not {kind} text")
    try:
        return raw.decode("utf-8-sig")  # -sig: a byte-order mark some editors write is not part of the text
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise EdgeVLMError(f"{path}:{line}: the {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                           f"{exc.start}); save it as UTF-8") from exc


def _read_regular_file(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. The file is opened non-blocking and checked with fstat
    before a byte is read, as edge_vlm.imaging reads pictures."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise EdgeVLMError(f"{what} not found: {path}") from None
    except OSError as exc:  # no permission, a symlink loop, a path through a file
        raise EdgeVLMError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    try:  # the checks look at what was opened, not at what the path named a moment before
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise EdgeVLMError(f"{what} {path} is not a regular file but {file_kind(info.st_mode)}")
        if info.st_size > limit:
            raise EdgeVLMError(f"{what} {path} is {info.st_size:,} bytes, more than {_limit_name(limit)} of "
                               f"{limit:,}: is it the right file?")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = _read_at_most(handle, info.st_size, limit + 1)
    except OSError as exc:
        raise EdgeVLMError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise EdgeVLMError(f"{what} {path} grew past {_limit_name(limit)} of {limit:,} bytes while it was read")
    return raw


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message: 'a directory', 'a FIFO (named pipe)', ..."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "a special file")


def _read_at_most(handle, size: int, most: int) -> bytes:
    """Up to `most` bytes: one read of the size fstat gave (one buffer of exactly that size), then more only should the
    file have grown since, so a file that keeps growing is still read no further than `most`."""
    parts = [handle.read(min(size + 1, most))]
    total = len(parts[0])
    while total > size and total < most:  # it grew past its fstat size
        part = handle.read(min(1 << 24, most - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _limit_name(limit: int) -> str:
    return _LIMIT_NAMES.get(limit, "the limit")


def parse_json(text: str, path: str | Path, what: str, first_line: int = 1):
    """Strict JSON, or one line `path:line:col: problem` naming the file. Refused beyond what json.loads refuses:
    NaN and Infinity (not JSON per RFC 8259, though Python's reader takes them) and numbers that would read as
    infinity (1e999), nesting too deep for the reader
    (a RecursionError), and an integer longer than Python converts (sys.get_int_max_str_digits, 4300 digits).
    `first_line`: the file's line that `text` starts on (JSON lines)."""
    import json

    def refuse(constant):
        raise _NotJSON(f"{constant} is not a JSON value")

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):  # 1e999: valid syntax, but Python would read it as infinity
            raise _NotJSON(f"{number} is larger than a number may be (it would read as infinity)")
        return value

    try:
        return json.loads(text, parse_constant=refuse, parse_float=finite)
    except json.JSONDecodeError as exc:
        line = exc.lineno + first_line - 1
        raise EdgeVLMError(f"{path}:{line}:{exc.colno}: {exc.msg} (the {what} is not valid JSON)") from exc
    except _NotJSON as exc:
        line, column = _constant_position(text)
        raise EdgeVLMError(f"{path}:{line + first_line - 1}:{column}: {exc} (in the {what})") from exc
    except RecursionError as exc:
        raise EdgeVLMError(f"{_where_in(text, path, first_line)}: lists or objects nested too deeply to read "
                           f"(in the {what})") from exc
    except ValueError as exc:  # the only other one: an integer over Python's digit limit
        import sys

        digits = getattr(sys, "get_int_max_str_digits", lambda: "too many")()
        raise EdgeVLMError(f"{_where_in(text, path, first_line)}: an integer of more than {digits} digits "
                           f"(in the {what})") from exc


class _NotJSON(ValueError):
    pass


def _where_in(text: str, path: str | Path, first_line: int) -> str:
    return str(path) if "\n" in text.strip() else f"{path}:{first_line}"  # the line is known for one-line text


def _constant_position(text: str) -> tuple[int, int]:
    """(line, column), 1-based, of the first NaN / Infinity / out-of-range number outside a string: called only once
    json.loads has met one."""
    import re

    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN|-?[0-9.]+[eE][-+]?[0-9]+)', text):
        if match.group(1) and match.group(1)[-1].isdigit() and math.isfinite(float(match.group(1))):
            continue  # a number in range
        if match.group(1):
            start = match.start(1)
            return text.count("\n", 0, start) + 1, start - (text.rfind("\n", 0, start) + 1) + 1
    return 1, 1


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
