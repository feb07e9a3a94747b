"""Writing outputs safely: every file and directory edge-vlm produces is written beside its target and renamed into
place, so a reader (or a crash) never sees half of one, and `--force` never destroys what is not ours.

This is the one place for "temp file, then rename"; the rest of the package calls `atomic_write` / `atomic_dir`.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Collection
from contextlib import contextmanager
from fnmatch import fnmatchcase
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
    """The first `limit` bytes of a file (what a recogniser looks at; a user's huge file is never read whole).
    Anything but a regular file reads as empty: opening a FIFO would wait for a writer forever."""
    if not path.is_file():
        return b""
    with open(path, "rb") as handle:
        return handle.read(limit)


def json_object(path: Path, limit: int = 1 << 26) -> dict | None:
    """The file's JSON object (UTF-8, at most `limit` bytes), or None when it is anything else (a FIFO, a device or
    a folder included: reading one could block or never end)."""
    if not path.is_file() or path.stat().st_size > limit:
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


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux: /proc/self/status), since
    os.umask can only read it by setting it, which races with other threads creating files meanwhile."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain open(path, "w") gives a new file: mkstemp's private 0600 is not what a user expects."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode a plain mkdir gives a new folder (mkdtemp makes 0700 ones)."""
    return 0o777 & ~current_umask()


def atomic_write(path: str | Path, data: str | bytes, what: str = "output") -> Path:
    """Write `data` to `path` through a temp file in the same folder and an atomic rename. The file gets the mode
    open() would give it: an existing file's own mode, else 0666 less the umask (never mkstemp's private 0600)."""
    path = check_output_parent(path, what)
    if path.is_dir():
        raise EdgeVLMError(f"cannot write the {what} {path}: it is a folder")
    try:
        mode = path.stat().st_mode & 0o7777 if path.is_file() else file_mode()
    except OSError:
        mode = file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
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


# ------------------------------------------------------------------------------------ what --force may replace
def owning(entries: Collection[str] | Callable[[Path], Collection[str]]):
    """Decorator for a recogniser `is_x(folder) -> bool` of one kind of output folder: `entries` are the glob
    patterns ('/'-separated, relative to the folder) of everything edge-vlm writes in such a folder, or a function
    of the folder that gives them (a bundle: what its manifest lists). `atomic_dir` then lets `--force` replace a
    recognised folder only when every entry in it matches, so a file the user saved there is never deleted."""

    def mark(recognise: Callable[[Path], bool]) -> Callable[[Path], bool]:
        recognise.owned = entries
        return recognise

    return mark


def first_foreign(folder: Path, entries: Collection[str]) -> Path | None:
    """The first entry under `folder` (sorted, depth first) that no pattern in `entries` covers, or None when
    every one does. A folder is covered when a pattern goes through it; a file (never a link, a FIFO, ...) when a
    pattern names it. A folder that cannot be listed counts as foreign: what it holds is unknown."""
    patterns = [tuple(pattern.split("/")) for pattern in entries]
    return _first_foreign(Path(folder), patterns, ())


def _first_foreign(folder: Path, patterns: list[tuple[str, ...]], prefix: tuple[str, ...]) -> Path | None:
    try:
        listing = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return folder
    for entry in listing:
        parts = (*prefix, entry.name)
        if entry.is_dir(follow_symlinks=False):
            if not any(len(p) > len(parts) and _matches(parts, p) for p in patterns):
                return Path(entry.path)
            inner = _first_foreign(Path(entry.path), patterns, parts)
            if inner is not None:
                return inner
        elif not (entry.is_file(follow_symlinks=False) and any(len(p) == len(parts) and _matches(parts, p)
                                                                for p in patterns)):
            return Path(entry.path)
    return None


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    return all(fnmatchcase(part, wanted) for part, wanted in zip(parts, pattern))


def literal(name: str) -> str:
    """A file name as a pattern that matches only itself (a manifest may list a name holding * ? or [)."""
    return glob.escape(name)


def atomic_dir(target: str | Path, force: bool = False, replaceable: Callable[[Path], bool] | None = None,
               what: str = "output"):
    """Context manager: yields a temp folder beside `target`; on success it takes `target`'s place, on any error
    (Ctrl-C, SIGTERM included) it vanishes. The folder gets the mode mkdir would give it (not mkdtemp's 0700).

    An existing `target` is replaced only with `force`, and then only if it is an empty folder or
    `replaceable(target)` says it is one of ours (a checkpoint, a bundle, a world) AND, where the recogniser is
    marked with `owning(...)`, every entry in it is one edge-vlm writes there: `--force` never deletes a user's
    folder or file, nor a file the user saved into an earlier output. (A recogniser without `owning` vouches for the
    whole folder: meant for folders inside a run's own output, such as a training state.)"""
    return _AtomicDir(Path(target), force, replaceable, what)


class _AtomicDir:
    def __init__(self, target: Path, force: bool, replaceable, what: str):
        self.target, self.force, self.replaceable, self.what = target, force, replaceable, what

    def __enter__(self) -> Path:
        target = self.target
        check_replaceable(target, self.force, self.replaceable, self.what)
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
        try:
            plain_modes(self.tmp)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if self.target.exists() or self.target.is_symlink():
            try:  # the user may have saved a file into the earlier output (or made the folder) meanwhile
                check_replaceable(self.target, self.force, self.replaceable, self.what)
            except EdgeVLMError:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
            old = self.target.with_name(f".{self.target.name}.old-{self.tmp.name[-8:]}")
            with _signals_held():  # Ctrl-C / SIGTERM between the two renames would leave no output in place
                self.target.rename(old)
                self.tmp.rename(self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.target)
        return False


@contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait until the block is done (they are delivered right after it)."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask (Windows): run the block as it is
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def plain_modes(root: Path) -> None:
    """Give a finished output folder and everything in it the modes mkdir / open() would under the umask: mkdtemp
    makes the folder 0700 and some writers (safetensors' save_file) make 0600 files, which another account (a
    service running `serve`, a teammate, a container) could not read. Links are left alone."""
    files, folders = file_mode(), folder_mode()
    os.chmod(root, folders)
    for parent, dirnames, filenames in os.walk(root):
        for name, mode in [*((d, folders) for d in dirnames), *((f, files) for f in filenames)]:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                os.chmod(path, mode)


def check_replaceable(target: str | Path, force: bool = False, replaceable: Callable[[Path], bool] | None = None,
                      what: str = "output") -> Path:
    """What `atomic_dir` checks on entering (see there), for a command to call before its slow work too: one line
    naming what is wrong (no --force, a user's folder or file, the first file a user saved into an earlier output,
    a path that cannot be replaced by a rename); changes nothing."""
    target = Path(target)
    _check_renameable(target, what)
    if not (target.exists() or target.is_symlink()):
        return target
    if not force:
        raise EdgeVLMError(f"{target} already exists; pass --force to replace it")
    folder = target.is_dir() and not target.is_symlink()
    if folder and is_empty_dir(target):
        return target
    if not (folder and replaceable is not None and replaceable(target)):
        kind = "folder" if target.is_dir() else "file"
        raise EdgeVLMError(f"--force replaces only an earlier {what} or an empty folder, and {target} is a {kind} "
                           "that is neither: choose another path")
    owned = getattr(replaceable, "owned", None)
    foreign = None if owned is None else first_foreign(target, owned(target) if callable(owned) else owned)
    if foreign is not None:
        raise EdgeVLMError(f"--force replaces only an earlier {what} or an empty folder, and {target} also holds "
                           f"{foreign}, which edge-vlm did not write: move it out of there, or choose another path")
    return target


def _check_renameable(target: Path, what: str) -> None:
    """A folder is replaced by renaming a temp folder beside it onto it: that needs a name, and cannot be done to the
    current folder or one holding it (`--out ''`, `--out .`, `--out ..`)."""
    shown = str(target) if str(target) not in ("", ".") else repr(str(target))
    if target.name in ("", ".", ".."):
        raise EdgeVLMError(f"cannot write the {what} to {shown}: give the path of a folder with a name (not the "
                           "current folder or its parent)")
    try:
        resolved, here = target.resolve(), Path.cwd().resolve()
    except (OSError, RuntimeError):  # a link loop, a deleted current folder: the steps after this report it
        return
    if resolved == here or resolved in here.parents:
        raise EdgeVLMError(f"cannot write the {what} to {shown}: it is the current folder or holds it; give a "
                           "folder beside it")
