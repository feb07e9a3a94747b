"""`edge-vlm info`: parameter counts of a preset, a checkpoint's or bundle's description, or the environment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "describe a preset (--preset), a checkpoint or bundle directory, or this machine's backends"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", help="a checkpoint or bundle directory")
    parser.add_argument("--preset", help="a model preset, e.g. llava-phi-2 (exact parameter counts, no weights built)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--verify", choices=["hash", "size", "none"], default="hash",
                        help="how a bundle's files are checked: hash (default: every file's sha256 and every float "
                             "weight finite, also a checkpoint's), size, none")


def _preset_report(name: str, as_json: bool) -> str:
    from edge_vlm.model.presets import count_parameters, get_preset, num_image_tokens

    spec = get_preset(name)
    counts = count_parameters(spec)
    if as_json:
        return json.dumps({"preset": name, "parameters": counts, "image_tokens": num_image_tokens(spec["vision"])})
    v, t = spec["vision"], spec["text"]
    lines = [
        f"preset {name}: {counts['total']:,} parameters ({counts['total'] / 1e9:.3f} B)",
        f"  vision tower  {counts['vision']:>15,}  CLIP ViT {v['num_hidden_layers']} layers x {v['hidden_size']}, "
        f"{v['image_size']} px / patch {v['patch_size']} -> {num_image_tokens(v)} image tokens",
        f"  projector     {counts['projector']:>15,}  Linear({v['hidden_size']}->{t['hidden_size']}), GELU, "
        f"Linear({t['hidden_size']}->{t['hidden_size']})",
        f"  LLM (Phi)     {counts['llm']:>15,}  {t['num_hidden_layers']} layers x {t['hidden_size']}, vocab "
        f"{t['vocab_size']}, lm_head with bias",
    ]
    return "\n".join(lines)


def _checkpoint_report(path: Path, as_json: bool) -> str:
    """The checkpoint's config and provenance (read before its weights are checked, so a checkpoint with damaged
    weights is still described)."""
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.model.checkpoint import check_checkpoint_dir, read_meta

    config_path = path / "config.json"
    if not config_path.is_file():
        check_checkpoint_dir(path)  # says what the folder is instead (a bundle, nothing)
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, OSError) as exc:  # not JSON, not UTF-8, unreadable
        raise EdgeVLMError(f"cannot read {config_path}: {exc}: the checkpoint is damaged") from exc
    if not isinstance(config, dict):
        raise EdgeVLMError(f"{config_path} is not a checkpoint config (a JSON {type(config).__name__}, not an object)")
    meta = read_meta(path)
    text, vision = _mapping(config.get("text_config")), _mapping(config.get("vision_config"))
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    info = {
        "checkpoint": str(path),
        "random_weights": meta.random_weights,
        "source": meta.source,
        "template": meta.template,
        "image": meta.image.to_dict() if meta.image else None,
        "vision": {k: vision.get(k) for k in ("hidden_size", "num_hidden_layers", "image_size", "patch_size")},
        "text": {k: text.get(k) for k in ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")},
        "weights_bytes": size,
    }
    if as_json:
        return json.dumps(info)
    lines = [f"checkpoint {path}" + ("  [RANDOM WEIGHTS: answers are meaningless]" if meta.random_weights else "")]
    lines += [f"  {key}: {value}" for key, value in info.items() if key != "checkpoint"]
    return "\n".join(lines)


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _environment_report() -> str:
    from edge_vlm import __version__
    from edge_vlm.deps import available

    lines = [f"edge-vlm {__version__}"]
    for module in ("torch", "transformers", "onnxruntime", "onnxruntime_genai", "tensorrt", "cv2", "rosbags",
                   "bitsandbytes", "peft", "accelerate"):
        if not available(module):
            lines.append(f"  {module:18s} not installed")
            continue
        from importlib.metadata import PackageNotFoundError, version

        dist = {"cv2": "opencv-python-headless", "onnxruntime_genai": "onnxruntime-genai"}.get(module, module)
        try:
            lines.append(f"  {module:18s} {version(dist)}")
        except PackageNotFoundError:
            lines.append(f"  {module:18s} installed")
    if available("onnxruntime"):
        import onnxruntime

        lines.append(f"  onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from edge_vlm.errors import EdgeVLMError

    if args.preset:
        print(_preset_report(args.preset, args.json))
        return 0
    if args.path is None:
        print(_environment_report())
        return 0
    path = Path(args.path)
    if not path.exists():
        raise EdgeVLMError(f"not found: {path}")
    if (path / "manifest.json").is_file():
        return _bundle(path, args)
    print(_checkpoint_report(path, args.json), flush=True)
    from edge_vlm.model.checkpoint import check_checkpoint

    # what loading refuses (whole weight files, every tensor with its shape; with the hashes' setting, finite
    # values), else one line and exit 2
    check_checkpoint(path, finite=args.verify == "hash")
    if not args.json:
        finite = ", every float weight finite" if args.verify == "hash" else ""
        print(f"  checked           every tensor config.json calls for, with its shape{finite}: OK")
    return 0


def _bundle(path: Path, args: argparse.Namespace) -> int:
    """Describe the bundle from its manifest, then check it as `ask` would (every file's sha256 by default, the
    manifest against the graphs) and more: with the hashes, that every float weight is finite (a bundle exported
    from, or re-hashed over, NaN weights). A damaged bundle is shown, then reported in one line with exit code 2."""
    from edge_vlm.export.manifest import describe
    from edge_vlm.runtime.bundle import check_contents, check_manifest, load_manifest, verify_files

    manifest = load_manifest(path)
    print(describe(path, as_json=args.json, manifest=manifest), flush=True)
    check_manifest(path, manifest)
    verify_files(path, manifest, args.verify, finite=True)
    check_contents(path, manifest)
    if not args.json:
        checked = {"hash": "every file's size and sha256, every float weight finite", "size": "every file's size",
                   "none": "no file's size or hash (--verify none)"}[args.verify]
        print(f"  checked           {checked}; precisions and context against the graphs: OK")
    return 0
