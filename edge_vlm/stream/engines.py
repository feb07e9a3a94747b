"""Pick the backend for a stream: an ONNX bundle (torch-free runtime) or a PyTorch checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from edge_vlm.errors import EdgeVLMError

DTYPES = ("float32", "bfloat16", "float16")


def load_engine(model: str | Path | None = None, bundle: str | Path | None = None, threads: int | None = None,
                dtype: str | None = None, device: str | None = None):
    """(engine, info) for exactly one of `model` (checkpoint dir) or `bundle` (exported bundle dir).

    `dtype` / `device` apply to checkpoints (e.g. bfloat16 halves a full-size model's memory; 'cuda').
    `info` says what answers: backend, path, and whether the weights are random (never model quality)."""
    if (model is None) == (bundle is None):
        raise EdgeVLMError("give exactly one of --model DIR (a checkpoint) or --bundle DIR (an exported bundle)")
    if bundle is not None:
        if dtype is not None or device is not None:
            raise EdgeVLMError("--dtype / --device are for --model checkpoints; a bundle's precision is fixed at "
                               "export and its execution provider is chosen automatically")
        return _bundle_engine(Path(bundle), threads)
    if dtype is not None and dtype not in DTYPES:
        raise EdgeVLMError(f"dtype {dtype!r} is not one of {DTYPES}")
    if not Path(model).is_dir():  # before importing torch (seconds) for the common typo
        raise EdgeVLMError(f"model directory not found: {model}")
    from edge_vlm.deps import require

    torch = require("torch")
    from edge_vlm.model.checkpoint import check_checkpoint_dir, read_meta

    path = check_checkpoint_dir(model)
    if threads:
        torch.set_num_threads(threads)
    from edge_vlm.model.engine import TorchEngine

    engine = TorchEngine.from_checkpoint(path, dtype=getattr(torch, dtype) if dtype else None, device=device)
    meta = read_meta(path)
    return engine, {"backend": "torch", "path": str(path), "random_weights": meta.random_weights,
                    "source": meta.source, "dtype": str(engine.dtype).replace("torch.", ""),
                    "device": str(engine.device)}


def _bundle_engine(path: Path, threads: int | None):
    if not path.is_dir():
        raise EdgeVLMError(f"bundle directory not found: {path}")
    if not (path / "manifest.json").is_file():
        hint = " (it looks like a checkpoint: use --model)" if (path / "config.json").is_file() else ""
        raise EdgeVLMError(f"no manifest.json in {path}: not an exported bundle{hint}")
    try:
        from edge_vlm.runtime import BundleEngine
    except ImportError as exc:
        raise EdgeVLMError(f"the bundle runtime (edge_vlm.runtime.BundleEngine) is not available in this install "
                           f"({exc}); run the checkpoint with --model DIR instead, or install 'edge-vlm[runtime]'"
                           ) from exc
    engine = BundleEngine.from_bundle(path, threads=threads)
    return engine, {"backend": "bundle", "path": str(path),
                    "random_weights": bool(getattr(engine, "random_weights", False))}
