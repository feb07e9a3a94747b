"""Writing outputs safely: every file and directory edge-vlm produces is written beside its target and renamed into
place, so a reader (or a crash) never sees half of one, and `--force` never destroys what is not ours.

This is the one place for "temp file, then rename"; the rest of the package calls `atomic_write` / `atomic_dir`.
"""

from __future__ import annotations

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
