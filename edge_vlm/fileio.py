"""Writing outputs safely: every file and directory edge-vlm produces is written beside its target and renamed into
place, so a reader (or a crash) never sees half of one, and `--force` never destroys what is not ours.

This is the one place for "temp file, then rename"; the rest of the package calls `atomic_write` / `atomic_dir`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from edge_vlm.errors import EdgeVLMError


def check_output_parent(path: str | Path, what: str = "output") -> Path:
    """Create `path`'s parent folder if needed and make sure a file can be written there; else one clear error.

    Catches the cases that otherwise end in a traceback halfway through the work: a parent that is a file, a
    read-only folder, a folder we may not create."""
    path = Path(path)
    parent = path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise EdgeVLMError(f"cannot write the {what} {path}: {ancestor} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeVLMError(f"cannot create the folder {parent} for the {what}: {exc.strerror or exc}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeVLMError(f"cannot write the {what} {path}: the folder {parent} is not writable")
    return path


def check_output_folder(folder: str | Path, what: str = "output") -> Path:
    """check_output_parent for a folder written later (after slow work that may still fail): proves it can be
    created and written, and leaves nothing behind (the folders it had to create are removed again)."""
    folder = Path(folder)
    for ancestor in [folder, *folder.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise EdgeVLMError(f"cannot write the {what} {folder}: {ancestor} is a file, not a folder")
            break
    missing = [a for a in [folder, *folder.parents] if not a.exists() and not a.is_symlink()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeVLMError(f"cannot create the {what} {folder}: {exc.strerror or exc}") from exc
    writable = os.access(folder, os.W_OK | os.X_OK)
    for created in missing:  # deepest first; rmdir only ever removes an empty folder
        try:
            created.rmdir()
        except OSError:
            break
    if not writable:
        raise EdgeVLMError(f"cannot write the {what} {folder}: it is not writable")
    return folder


def check_output_file(path: str | Path, what: str = "output", ours: Callable[[Path], bool] | None = None) -> Path:
    """Refuse, in one line and before any slow work, a named output FILE that would replace what is not ours.

    The file may be written when it does not exist, is empty, or `ours(path)` recognises it as one edge-vlm wrote
    earlier (a bench report, a stream log, ...): rerunning a command replaces its own output, never a user's file.
    A folder (or a link to one) where the file goes is refused too. Checks nothing about the parent folder: that is
    check_output_parent's (or check_output_folder's) job."""
    path = Path(path)
    if path.is_dir():
        raise EdgeVLMError(f"{path} is a folder: give a file name for the {what}")
    if not (path.exists() or path.is_symlink()):
        return path
    try:
        empty = path.is_file() and path.stat().st_size == 0
        recognised = not empty and path.is_file() and ours is not None and ours(path)
    except (OSError, ValueError):  # unreadable, or not what the recogniser can parse: not known to be ours
        empty = recognised = False
    if not (empty or recognised):
        raise EdgeVLMError(f"{path} exists and was not written by edge-vlm: choose another path or remove it first")
    return path


def read_head(path: Path, limit: int = 1 << 16) -> bytes:
    """The first `limit` bytes of a file (what a recogniser looks at; a user's huge file is never read whole)."""
    with open(path, "rb") as handle:
        return handle.read(limit)


def json_object(path: Path, limit: int = 1 << 26) -> dict | None:
    """The file's JSON object (UTF-8, at most `limit` bytes), or None when it is anything else."""
    if path.stat().st_size > limit:
        return None
    try:
        value = json.loads(path.read_bytes())
    except ValueError:  # not UTF-8 or not JSON
        return None
    return value if isinstance(value, dict) else None


def first_json_line(path: Path, limit: int = 1 << 20) -> dict | None:
    """The JSON object on the file's first line (a JSONL log), or None."""
    head = read_head(path, limit)
    if b"\n" not in head:
        return None
    try:
        value = json.loads(head.split(b"\n", 1)[0])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def png_text(path: Path) -> dict:
    """The text chunks of a PNG file (Software, Title, ...); {} for anything that is not a PNG. Reads the header
    only, never the pixels."""
    if read_head(path, 8) != b"\x89PNG\r\n\x1a\n":
        return {}
    from PIL import Image

    try:
        with Image.open(path) as image:
            return {k: v for k, v in image.info.items() if isinstance(v, str)}
    except Exception:  # noqa: BLE001 - a damaged PNG is simply not recognised (PIL raises many kinds)
        return {}


def atomic_write(path: str | Path, data: str | bytes, what: str = "output") -> Path:
    """Write `data` to `path` through a temp file in the same folder and an atomic rename."""
    path = check_output_parent(path, what)
    if path.is_dir():
        raise EdgeVLMError(f"cannot write the {what} {path}: it is a folder")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise EdgeVLMError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
        raise
    return path


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def atomic_dir(target: str | Path, force: bool = False, replaceable: Callable[[Path], bool] | None = None,
               what: str = "output"):
    """Context manager: yields a temp folder beside `target`; on success it takes `target`'s place, on any error
    (Ctrl-C included) it vanishes.

    An existing `target` is replaced only with `force`, and then only if it is an empty folder or
    `replaceable(target)` says it is one of ours (a checkpoint, a bundle, a world): `--force` never deletes a
    user's folder or file."""
    return _AtomicDir(Path(target), force, replaceable, what)


class _AtomicDir:
    def __init__(self, target: Path, force: bool, replaceable, what: str):
        self.target, self.force, self.replaceable, self.what = target, force, replaceable, what

    def __enter__(self) -> Path:
        target = self.target
        if target.exists() or target.is_symlink():
            if not self.force:
                raise EdgeVLMError(f"{target} already exists; pass --force to replace it")
            ours = target.is_dir() and not target.is_symlink() and (
                is_empty_dir(target) or (self.replaceable is not None and self.replaceable(target)))
            if not ours:
                kind = "folder" if target.is_dir() else "file"
                raise EdgeVLMError(f"--force replaces only an earlier {self.what} or an empty folder, and {target} "
                                   f"is a {kind} that is neither: choose another path")
        check_output_parent(target, self.what)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        except OSError as exc:
            raise EdgeVLMError(f"cannot write the {self.what} {target}: {exc.strerror or exc}") from exc
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{self.tmp.name[-8:]}")
            self.target.rename(old)
            self.tmp.rename(self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.target)
        return False
