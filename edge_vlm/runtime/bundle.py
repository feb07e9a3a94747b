"""The bundle on disk: `manifest.json` plus the files it lists, read and checked without torch.

A bundle is the deployable artifact (design.md): the vision ONNX, the decoder ONNX (onnxruntime-genai's graph, which
takes `inputs_embeds`), the token-embedding table, the tokenizer and the preprocessing settings. The manifest names
every file with its size and sha256, so a copy that lost or damaged a file is refused with the file's name instead of
crashing inside ONNX Runtime. The format is described in export/DESIGN.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageConfig

MANIFEST_FILE = "manifest.json"
FORMAT = "edge-vlm-bundle"
SCHEMA_VERSION = 1

# roles of the files a bundle must have; the manifest maps each role to a relative path
REQUIRED_ROLES = ("vision", "decoder", "embeddings", "tokenizer")
VERIFY_MODES = ("hash", "size", "none")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (bundles hold multi-GB files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict:
    """The parsed manifest of a bundle directory, after checking its format and schema version."""
    path = Path(directory)
    if not path.exists():
        raise EdgeVLMError(f"bundle not found: {path}")
    if not path.is_dir():
        raise EdgeVLMError(f"a bundle is a directory, but {path} is a file")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        hint = " (it looks like a checkpoint: use --model, or export it with `edge-vlm export`)" if (
            path / "config.json").is_file() else ""
        raise EdgeVLMError(f"no {MANIFEST_FILE} in {path}: not a bundle directory{hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeVLMError(f"{manifest_path} is not valid JSON ({exc}): the bundle is damaged, export it again") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EdgeVLMError(f"{manifest_path} is not an edge-vlm bundle manifest (format {manifest.get('format')!r})"
                           if isinstance(manifest, dict) else f"{manifest_path} is not an edge-vlm bundle manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EdgeVLMError(
            f"{path} has bundle schema version {version!r}, but this edge-vlm reads version {SCHEMA_VERSION}: "
            "re-export the bundle with this version (`edge-vlm export`) or install the edge-vlm that wrote it"
        )
    for key in ("files", "roles", "model"):
        if not isinstance(manifest.get(key), dict):
            raise EdgeVLMError(f"{manifest_path} has no {key!r} section: the bundle is damaged, export it again")
    missing_roles = [role for role in REQUIRED_ROLES if role not in manifest["roles"]]
    if missing_roles:
        raise EdgeVLMError(f"{manifest_path} lists no file for {', '.join(missing_roles)}: export the bundle again")
    return manifest


def verify_files(directory: str | Path, manifest: dict, mode: str = "hash") -> None:
    """Check that every file the manifest lists is present with its recorded size (and sha256 when mode 'hash').

    A short file is reported as truncated (an interrupted copy), a changed one as a hash mismatch.
    """
    if mode not in VERIFY_MODES:
        raise EdgeVLMError(f"verify mode {mode!r} is not one of {VERIFY_MODES}")
    if mode == "none":
        return
    root = Path(directory)
    for name, entry in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise EdgeVLMError(f"bundle {root} is missing {name}: copy the whole bundle directory or export it again")
        size, expected = path.stat().st_size, int(entry["bytes"])
        if size != expected:
            kind = "truncated" if size < expected else "larger than recorded"
            raise EdgeVLMError(
                f"{path} is {kind} ({size} bytes, manifest says {expected}): the copy is incomplete or damaged; "
                "copy it again or re-export the bundle"
            )
        if mode == "hash" and sha256_file(path) != entry["sha256"]:
            raise EdgeVLMError(
                f"{path} does not match its sha256 in {MANIFEST_FILE}: the file was modified or damaged; "
                "copy it again or re-export the bundle"
            )


@dataclass
class Bundle:
    """A checked bundle directory and what the runtime needs from its manifest."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, directory: str | Path, verify: str = "hash") -> Bundle:
        """Read the manifest and check the files (`verify`: 'hash' (default), 'size' or 'none')."""
        path = Path(directory)
        manifest = read_manifest(path)
        verify_files(path, manifest, verify)
        return cls(path, manifest)

    def file(self, role: str) -> Path:
        """The path of the file with this role (vision, decoder, embeddings, tokenizer, ...)."""
        try:
            return self.path / self.manifest["roles"][role]
        except KeyError as exc:
            raise EdgeVLMError(f"bundle {self.path} has no {role} file") from exc

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def image_config(self) -> ImageConfig:
        return ImageConfig.from_dict(self.manifest.get("image", {}))

    @property
    def precision(self) -> dict:
        return self.manifest.get("precision", {})

    @property
    def tensorrt(self) -> dict:
        return self.manifest.get("tensorrt") or {}
