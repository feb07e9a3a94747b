"""Opening the thing to evaluate: a checkpoint (PyTorch, TorchEngine) or a bundle (ONNX Runtime, BundleEngine).

Both implement edge_vlm.engine's Engine protocol; the runner needs nothing else. Heavy imports happen here, inside
the functions, so importing edge_vlm.eval stays light.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from edge_vlm.errors import EdgeVLMError

KINDS = ("model", "bundle")


@dataclass
class Source:
    """A checkpoint or bundle directory and the label its results are filed under."""

    path: Path
    kind: str
    label: str

    @property
    def description(self) -> str:
        return f"{self.kind}:{self.path.resolve()}"


def detect_kind(path: str | Path) -> str:
    """'bundle' for a directory with manifest.json, 'model' for one with config.json; else a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise EdgeVLMError(f"{path} is not a directory (give a checkpoint or a bundle directory)")
    if (path / "manifest.json").is_file():
        return "bundle"
    if (path / "config.json").is_file():
        return "model"
    raise EdgeVLMError(f"{path} is neither a checkpoint (config.json) nor a bundle (manifest.json)")


def make_sources(paths: list[str], kind: str | None = None) -> list[Source]:
    """Sources with unique labels (the directory name; a number is added where two names collide)."""
    sources: list[Source] = []
    seen: dict[str, int] = {}
    for raw in paths:
        path = Path(raw)
        resolved_kind = kind or detect_kind(path)
        if resolved_kind not in KINDS:
            raise EdgeVLMError(f"unknown source kind {resolved_kind!r}")
        name = path.resolve().name or "model"
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}-{seen[name]}"
        sources.append(Source(path, resolved_kind, label))
    return sources


def check_source(source: Source) -> None:
    """What opening `source` would refuse, found without loading a model: a bundle's manifest, its files' sizes and
    sha256 and the manifest against its graphs; a checkpoint's config, whole weight files, tokenizer and metadata.
    `eval --compare` runs it on every source before it evaluates the first."""
    if source.kind == "bundle":
        _runtime().Bundle.open(source.path, verify="hash")
        return
    from edge_vlm.model.checkpoint import check_checkpoint_dir, read_meta

    check_checkpoint_dir(source.path)
    read_meta(source.path)


def open_engine(source: Source, device: str | None = None, providers: list[str] | None = None,
                threads: int | None = None, verify: str = "hash"):
    """The Engine for `source`. Random-weight checkpoints are announced on stderr (their scores mean nothing).
    `verify`: a bundle's file check ('size' where check_source has just hashed them)."""
    if source.kind == "bundle":
        return _open_bundle(source.path, providers, threads, verify)
    from edge_vlm.model.checkpoint import check_checkpoint_dir, read_meta

    check_checkpoint_dir(source.path)
    meta = read_meta(source.path)
    if meta.random_weights:
        print(f"note: {source.path} has RANDOM weights ({meta.source}); its scores are meaningless.", file=sys.stderr)
    from edge_vlm.cli.args import check_device
    from edge_vlm.model.engine import TorchEngine

    check_device(device)
    return TorchEngine.from_checkpoint(source.path, device=device)


def _runtime():
    try:
        import edge_vlm.runtime as runtime
    except ImportError as exc:
        raise EdgeVLMError(
            f"--bundle needs the ONNX runtime (edge_vlm.runtime.BundleEngine), which is not available in this "
            f"installation ({exc}); evaluate the checkpoint with --model instead"
        ) from exc
    return runtime


def _open_bundle(path: Path, providers, threads, verify: str = "hash"):
    return _runtime().BundleEngine.from_bundle(path, providers=providers, threads=threads, verify=verify)
