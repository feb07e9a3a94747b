"""Writing a bundle's manifest.json, and describing one for `edge-vlm info BUNDLE`. Torch-free (info stays light).

The format itself (reading, checking) is edge_vlm.runtime.bundle; export/DESIGN.md explains every field.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edge_vlm.runtime.bundle import FORMAT, MANIFEST_FILE, SCHEMA_VERSION, load_manifest, sha256_file

TOOLS = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-genai", "onnxscript", "tokenizers", "numpy")


def tool_versions() -> dict:
    """Versions of the tools that made the bundle (a bundle that misbehaves can be reproduced with the same set)."""
    from edge_vlm import __version__

    versions = {"edge-vlm": __version__, "python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def checkpoint_hash(directory: Path) -> str:
    """One sha256 over the checkpoint's config, weights and tokenizer (each file hashed, then the list of hashes)."""
    import hashlib

    names = sorted([p.name for p in directory.glob("*.safetensors")] + ["config.json", "tokenizer.json"])
    digest = hashlib.sha256()
    for name in names:
        path = directory / name
        if path.is_file():
            digest.update(f"{name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def file_entries(bundle_dir: Path, exclude: tuple[str, ...] = (MANIFEST_FILE,)) -> dict:
    """{relative path: {bytes, sha256}} for every file in the bundle directory (sub-folders included)."""
    entries = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        name = path.relative_to(bundle_dir).as_posix()
        if name in exclude:
            continue
        entries[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return entries


def new_manifest(**sections) -> dict:
    """The manifest skeleton with the format header; `sections` are the body (see export/DESIGN.md)."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **sections,
    }


def write_manifest(bundle_dir: Path, manifest: dict) -> Path:
    """Hash every file of the bundle into the manifest and write manifest.json (the last file an export writes)."""
    manifest["files"] = file_entries(bundle_dir)
    path = bundle_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def describe(path: str | Path, as_json: bool = False, manifest: dict | None = None) -> str:
    """A bundle's summary for `edge-vlm info`: precision per part, sizes, source, validation figures.

    Describes the manifest as written (only its format and schema version are checked, and no file it names is
    opened), so `info` can still show a damaged bundle before it reports what is wrong (see cli/info.py)."""
    path = Path(path)
    manifest = load_manifest(path) if manifest is None else manifest
    if as_json:
        return json.dumps(manifest)
    model, source, precision = _section(manifest, "model"), _section(manifest, "source"), _section(manifest, "precision")
    files, roles, target = _section(manifest, "files"), _section(manifest, "roles"), _section(manifest, "target")
    validation = _section(manifest, "validation")
    total = sum(_bytes(entry) for entry in files.values())
    lines = [f"bundle {path}" + ("  [RANDOM WEIGHTS: answers are meaningless]" if source.get("random_weights") else "")]
    if validation.get("degraded"):
        lines.append("  DEGRADED: written with --allow-degraded although the validation gate failed")
    lines += [
        f"  schema            {manifest['format']} v{manifest['schema_version']}, created {manifest.get('created')}",
        f"  target            {target.get('name')} (decoder built for {target.get('execution_provider')})",
        f"  precision         vision {precision.get('vision')}, decoder {precision.get('decoder')}, "
        f"embeddings {precision.get('embeddings')}",
    ]
    quant = manifest.get("quantization")
    if isinstance(quant, dict):
        lines.append(f"  quantization      {quant.get('method')} {quant.get('bits')}-bit, block {quant.get('block_size')}, "
                     f"{'symmetric' if quant.get('symmetric') else 'asymmetric'}, lm_head {quant.get('lm_head_bits')}-bit")
    lines += [
        f"  model             {model.get('num_layers')} layers x {model.get('hidden_size')}, vocab "
        f"{model.get('vocab_size')}, {model.get('num_image_tokens')} image tokens at "
        f"{_section(manifest, 'image').get('image_size')} px, context {model.get('context_length')}",
        f"  image tokens      {_image_tokens(path, manifest)}",
        f"  files             {len(files)}, {total / 1e6:.1f} MB in all",
    ]
    for role in ("vision", "decoder"):
        rel = roles.get(role)
        size = sum(_bytes(e) for name, e in files.items() if name in (rel, f"{rel}.data"))
        lines.append(f"    {role:15s} {rel} ({size / 1e6:.1f} MB)")
    lines.append(f"  source            {source.get('checkpoint')} (sha256 {str(source.get('checkpoint_sha256'))[:16]}...)")
    if validation:
        figures = _section(validation, "figures")
        verdict = "passed" if validation.get("passed") else "FAILED"
        lines.append(f"  validation        {verdict} on {figures.get('samples')} samples ({validation.get('data')})")
        for name, value in figures.items():
            if isinstance(value, float):
                lines.append(f"    {name:22s} {value:.6g}")
    if manifest.get("tensorrt"):
        lines.append(f"  tensorrt          {manifest['tensorrt']}")
    lines.append("  tools             " + ", ".join(f"{k} {v}" for k, v in _section(manifest, "tools").items()))
    return "\n".join(lines)


def _image_tokens(path: Path, manifest: dict) -> str:
    """'36 (every patch token)' / '18 of 36 (REDUCED; ...)'; a section too damaged to read is shown as it is (the
    checks after the description report it)."""
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.image_tokens import summary
    from edge_vlm.runtime.bundle import image_tokens

    try:
        return summary(*image_tokens(path / MANIFEST_FILE, manifest))
    except (EdgeVLMError, KeyError, TypeError):
        return f"{_section(manifest, 'model').get('num_image_tokens')!r} (vision section {manifest.get('vision')!r})"


def _section(manifest: dict, key: str) -> dict:
    value = manifest.get(key)
    return value if isinstance(value, dict) else {}


def _bytes(entry) -> int:
    size = entry.get("bytes") if isinstance(entry, dict) else None
    return size if isinstance(size, int) else 0
