"""What the benchmark knows about its inputs without loading them: sizes on disk, bundle precision, random-weight
flags. Torch-free and onnxruntime-free (the parent process uses it to pick a bundle per backend)."""

from __future__ import annotations

import json
from pathlib import Path

from edge_vlm.errors import EdgeVLMError


def checkpoint_artifacts(directory: str | Path) -> dict:
    """Bytes of a checkpoint's weight files (safetensors) and of the whole directory."""
    path = Path(directory)
    weights = {p.name: p.stat().st_size for p in sorted(path.glob("*.safetensors"))}
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"kind": "checkpoint", "path": str(path), "files": weights, "weights_bytes": sum(weights.values()),
            "total_bytes": total}


def check_model_dir(directory: str | Path) -> Path:
    """Fail early, with the fix, when --model is not a checkpoint directory (before any worker starts)."""
    path = Path(directory)
    if not path.is_dir():
        raise EdgeVLMError(f"--model {path}: no such checkpoint directory")
    if not (path / "config.json").is_file():
        hint = " (it is a bundle: pass it with --bundle)" if (path / "manifest.json").is_file() else ""
        raise EdgeVLMError(f"--model {path}: no config.json, not a checkpoint directory{hint}")
    return path


# Run in a child process: these checks need torch, which the bench's own process keeps out of its memory (the
# workers measure theirs). The refusal comes back as the last stdout line, JSON.
_TORCH_CHECKS = """
import json, sys
from edge_vlm.errors import EdgeVLMError
try:
    if sys.argv[1]:
        from edge_vlm.model.checkpoint import check_checkpoint
        check_checkpoint(sys.argv[1], finite=False)
    if sys.argv[2] == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise EdgeVLMError("--device cuda, but torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
except EdgeVLMError as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def check_torch_inputs(model: str | Path | None, device: str) -> None:
    """What a torch backend's worker would refuse at once, refused before any backend runs: the checkpoint as
    loading checks it without reading a weight (its files whole, every tensor config.json calls for there with its
    shape: edge_vlm.model.checkpoint.check_checkpoint) and, for --device cuda, a GPU torch can use. A check that
    cannot run at all (no torch here) is left to the worker, which reports it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-c", _TORCH_CHECKS, str(model or ""), device], capture_output=True,
                          text=True, env=env)
    if proc.returncode in (130, -2):
        raise KeyboardInterrupt
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            refused = json.loads(lines[-1]).get("refused")
        except (ValueError, AttributeError):
            return
        if refused:
            raise EdgeVLMError(refused)


def checkpoint_random_weights(directory: str | Path) -> bool:
    """The checkpoint's edge_vlm.json random_weights flag, read as plain JSON (edge_vlm.model would import torch)."""
    path = Path(directory) / "edge_vlm.json"
    try:
        return bool(json.loads(path.read_text()).get("random_weights", False))
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def bundle_manifest(directory: str | Path) -> dict:
    """The bundle's manifest.json with its format and contents checked (edge_vlm.runtime.bundle.read_manifest: no
    file of the bundle is opened), so a damaged bundle is refused before any worker starts."""
    from edge_vlm.runtime.bundle import read_manifest

    return read_manifest(directory)


def checkpoint_context(directory: str | Path) -> int | None:
    """The checkpoint's context length (config.json's text_config.max_position_embeddings), read as plain JSON;
    None when it cannot be read (the worker that loads the checkpoint then reports why)."""
    try:
        value = json.loads((Path(directory) / "config.json").read_text())["text_config"]["max_position_embeddings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def bundle_precision(manifest: dict) -> str:
    """The decoder's precision (fp32 / fp16 / int8 / int4): what the onnxruntime backend name refers to."""
    precision = manifest.get("precision")
    if isinstance(precision, dict):
        precision = precision.get("decoder") or precision.get("llm")
    if not isinstance(precision, str):
        raise EdgeVLMError("the bundle manifest records no decoder precision: export the bundle again")
    return precision.lower()


def bundle_random_weights(manifest: dict) -> bool:
    """True when the bundle was exported from a random-weight checkpoint (wherever the manifest records it)."""
    for section in (manifest, manifest.get("source") or {}, manifest.get("model") or {}):
        if isinstance(section, dict) and section.get("random_weights"):
            return True
    return False


def bundle_artifacts(directory: str | Path, manifest: dict) -> dict:
    """Bytes per role (an ONNX file and its external-data files count together) and in total."""
    root = Path(directory)
    files = {name: int(entry.get("bytes", 0)) if isinstance(entry, dict) else 0
             for name, entry in (manifest.get("files") or {}).items()}
    for name in files:  # the manifest's figures, or the disk's when it records none
        if not files[name] and (root / name).is_file():
            files[name] = (root / name).stat().st_size
    roles = {}
    for role, rel in (manifest.get("roles") or {}).items():
        roles[role] = sum(size for name, size in files.items() if name == rel or name.startswith(rel + "."))
    return {"kind": "bundle", "path": str(root), "files": files, "roles": roles, "total_bytes": sum(files.values())}


def pick_bundles(bundles: list[str], precisions: list[str]) -> dict[str, str]:
    """precision -> bundle dir, for the onnxruntime backends asked for; an error names what is missing."""
    by_precision: dict[str, str] = {}
    for directory in bundles:
        precision = bundle_precision(bundle_manifest(directory))
        if precision in by_precision:
            raise EdgeVLMError(f"two bundles with {precision} decoders: {by_precision[precision]} and {directory}")
        by_precision[precision] = directory
    missing = [p for p in precisions if p not in by_precision]
    if missing:
        have = ", ".join(f"{p} ({d})" for p, d in by_precision.items()) or "none"
        raise EdgeVLMError(
            f"no bundle with a {'/'.join(missing)} decoder among --bundle (have: {have}); export one with "
            f"`edge-vlm export --model DIR --out BUNDLE --precision {missing[0]}`"
        )
    return by_precision


def image_tokens_info(image_tokens: int, patch_tokens: int, selection) -> dict:
    """What a backend gives its language model per image: K of N patch tokens, how they were chosen, and the line the
    table shows (edge_vlm.image_tokens). Recorded in each backend's `info`: a reduced setting is another model."""
    from edge_vlm.image_tokens import summary

    return {"tokens": image_tokens, "patch_tokens": patch_tokens,
            "selection": None if selection is None else selection.to_dict(),
            "summary": summary(image_tokens, patch_tokens, selection)}
