"""Opening the thing to evaluate: a checkpoint (PyTorch, TorchEngine) or a bundle (ONNX Runtime, BundleEngine).

Both implement edge_vlm.engine's Engine protocol; the runner needs nothing else. Heavy imports happen here, inside
the functions, so importing edge_vlm.eval stays light.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_vlm.errors import EdgeVLMError

KINDS = ("model", "bundle")


# DIR@K or DIR@KcC: the source with K image tokens, C of them contextual (edge_vlm.image_tokens)
_TOKENS_SUFFIX = re.compile(r"@(\d+)(?:c(\d+))?")


@dataclass
class Source:
    """A checkpoint or bundle directory and the label its results are filed under; `image_tokens` /
    `contextual_tokens` when it was given as DIR@K or DIR@KcC."""

    path: Path
    kind: str
    label: str
    image_tokens: int | None = None
    contextual_tokens: int | None = None

    @property
    def description(self) -> str:
        """What run.json records (a resumed run with another model or K is refused)."""
        tokens = "" if self.image_tokens is None else f"@{self.image_tokens}" + (
            f"c{self.contextual_tokens}" if self.contextual_tokens else "")
        return f"{self.kind}:{self.path.resolve()}{tokens}"


def split_tokens(raw: str) -> tuple[str, int | None, int | None]:
    """'runs/ckpt@144' -> ('runs/ckpt', 144, None), 'runs/ckpt@64c10' -> ('runs/ckpt', 64, 10); a folder whose own
    name ends so is taken as it is."""
    match = _TOKENS_SUFFIX.search(raw)
    if match is None or match.end() != len(raw) or Path(raw).exists():
        return raw, None, None
    contextual = match.group(2)
    return raw[: match.start()], int(match.group(1)), None if contextual is None else int(contextual)


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
    """Sources with unique labels (the directory name, with @K for an image-token setting; a number is added where
    two names collide). A checkpoint given as DIR@K (or DIR@KcC) answers with K of its image tokens, C of them
    merged (edge_vlm.image_tokens); a bundle's K is fixed at export, so DIR@K must restate it."""
    sources: list[Source] = []
    seen: dict[str, int] = {}
    for raw in paths:
        text, image_tokens, contextual = split_tokens(str(raw))
        path = Path(text)
        resolved_kind = kind or detect_kind(path)
        if resolved_kind not in KINDS:
            raise EdgeVLMError(f"unknown source kind {resolved_kind!r}")
        name = (path.resolve().name or "model") + str(raw)[len(text):]
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}-{seen[name]}"
        sources.append(Source(path, resolved_kind, label, image_tokens, contextual))
    return sources


def _selection(source: Source, patch_tokens: int | None):
    """The checkpoint's token selection for DIR@K (checked against its N patch tokens), or None."""
    if source.image_tokens is None:
        return None
    from edge_vlm.image_tokens import choose

    if patch_tokens is None:
        raise EdgeVLMError(f"{source.path}/config.json does not give the vision tower's image_size and patch_size: "
                           f"cannot check @{source.image_tokens} against the model")
    return choose(source.image_tokens, source.contextual_tokens, patch_tokens, f"eval source {source.label}: image tokens")


def _check_bundle_tokens(source: Source, bundle) -> None:
    if source.image_tokens is None:
        return
    k, n, selection = bundle.image_tokens
    kept = selection.contextual if selection else 0
    if (source.image_tokens, source.contextual_tokens or 0) != (k, kept):
        raise EdgeVLMError(f"{source.label}: the bundle {source.path} gives {k} of {n} image tokens ({kept} "
                           "contextual), fixed at export: give it without @K, or export it with --image-tokens")


def check_source(source: Source) -> None:
    """What opening `source` would refuse, found without loading a model: a bundle's manifest, its files' sizes and
    sha256 and the manifest against its graphs; a checkpoint's config, whole weight files, tokenizer and metadata.
    `eval --compare` runs it on every source before it evaluates the first."""
    if source.kind == "bundle":
        _check_bundle_tokens(source, _runtime().Bundle.open(source.path, verify="hash"))
        return
    from edge_vlm.image_tokens import checkpoint_patch_tokens
    from edge_vlm.model.checkpoint import check_checkpoint_dir, read_meta

    check_checkpoint_dir(source.path)
    read_meta(source.path)
    _selection(source, checkpoint_patch_tokens(source.path))


def open_engine(source: Source, device: str | None = None, providers: list[str] | None = None,
                threads: int | None = None, verify: str = "hash"):
    """The Engine for `source`. Random-weight checkpoints are announced on stderr (their scores mean nothing).
    `verify`: a bundle's file check ('size' where check_source has just hashed them)."""
    if source.kind == "bundle":
        engine = _open_bundle(source.path, providers, threads, verify)
        _check_bundle_tokens(source, engine.bundle)
        return engine
    from edge_vlm.image_tokens import checkpoint_patch_tokens
    from edge_vlm.model.checkpoint import check_checkpoint_dir, read_meta

    check_checkpoint_dir(source.path)
    selection = _selection(source, checkpoint_patch_tokens(source.path))
    meta = read_meta(source.path)
    if meta.random_weights:
        print(f"note: {source.path} has RANDOM weights ({meta.source}); its scores are meaningless.", file=sys.stderr)
    from edge_vlm.cli.args import check_device
    from edge_vlm.model.engine import TorchEngine

    check_device(device)
    return TorchEngine.from_checkpoint(source.path, device=device, token_selection=selection)


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
