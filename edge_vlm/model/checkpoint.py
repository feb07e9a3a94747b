"""Checkpoint directories: transformers' layout (config.json + safetensors) plus tokenizer and `edge_vlm.json`.

Safetensors only: nothing here unpickles (a .bin file is refused; `edge-vlm convert` reads legacy .bin with
`weights_only=True`). Writes are atomic: a temp dir beside the target, renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge_vlm.errors import EdgeVLMError
from edge_vlm.fileio import atomic_dir
from edge_vlm.imaging import ImageConfig
from edge_vlm.tokenizer import TextTokenizer

META_FILE = "edge_vlm.json"
FORMAT = "edge-vlm-checkpoint"
FORMAT_VERSION = 1


@dataclass
class CheckpointMeta:
    template: str = "phi-2_v0"
    image: ImageConfig | None = None
    random_weights: bool = False
    source: str = ""

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "template": self.template,
            "image": (self.image or ImageConfig()).to_dict(),
            "random_weights": self.random_weights,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CheckpointMeta:
        return cls(
            template=data.get("template", "phi-2_v0"),
            image=ImageConfig.from_dict(data.get("image", {})),
            random_weights=bool(data.get("random_weights", False)),
            source=data.get("source", ""),
        )


def check_checkpoint_dir(directory: str | Path) -> Path:
    """Fail with a clear message unless `directory` looks like a checkpoint."""
    path = Path(directory)
    if not path.exists():
        raise EdgeVLMError(f"model directory not found: {path}")
    if not path.is_dir():
        raise EdgeVLMError(f"model path is not a directory: {path}")
    if not (path / "config.json").is_file():
        hint = " (it looks like a bundle: use --bundle)" if (path / "manifest.json").is_file() else ""
        raise EdgeVLMError(f"no config.json in {path}: not a model checkpoint directory{hint}")
    if not any(path.glob("*.safetensors")):
        legacy = " (it has .bin weights: run `edge-vlm convert` first)" if any(path.glob("*.bin")) else ""
        raise EdgeVLMError(f"no .safetensors weights in {path}{legacy}")
    if not (path / "tokenizer.json").is_file():
        raise EdgeVLMError(f"no tokenizer.json in {path}")
    return path


def is_checkpoint_dir(path: Path) -> bool:
    """A folder edge-vlm wrote as a checkpoint (its edge_vlm.json says so): the only kind `--force` may replace."""
    try:
        return json.loads((Path(path) / META_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_meta(directory: str | Path) -> CheckpointMeta:
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        return CheckpointMeta()
    try:
        return CheckpointMeta.from_dict(json.loads(meta_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise EdgeVLMError(f"cannot read {meta_path}: {exc}") from exc


def _write_preprocessor_config(directory: Path, image: ImageConfig) -> None:
    """transformers-compatible CLIP settings, so other tools read our checkpoints' preprocessing too."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image.image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image.image_size, "width": image.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(image.mean),
        "image_std": list(image.std),
        "do_convert_rgb": True,
        "image_aspect_ratio": image.aspect,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def save_checkpoint(model, tokenizer: TextTokenizer, directory: str | Path, meta: CheckpointMeta | None = None,
                    force: bool = True) -> Path:
    """Write model (safetensors), tokenizer, preprocessing and edge_vlm.json atomically."""
    meta = meta or CheckpointMeta()
    image = meta.image or ImageConfig(image_size=model.config.vision_config.image_size)
    meta.image = image
    target = Path(directory)
    with atomic_dir(target, force=force, replaceable=is_checkpoint_dir, what="checkpoint") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save(tmp, model_max_length=model.config.text_config.max_position_embeddings)
        _write_preprocessor_config(tmp, image)
        (tmp / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    return target


def load_checkpoint(directory: str | Path, dtype=None, device: str | None = None, **load_kwargs):
    """(model, tokenizer, meta) from a checkpoint directory; the model is in eval mode."""
    from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration

    path = check_checkpoint_dir(directory)
    tokenizer = TextTokenizer.from_dir(path)
    meta = read_meta(path)
    try:
        model = LlavaPhiForConditionalGeneration.from_pretrained(path, use_safetensors=True, dtype=dtype, **load_kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise EdgeVLMError(f"cannot load the model in {path}: {exc}") from exc
    if device is not None:
        model = model.to(device)
    if model.config.image_token_id != tokenizer.image_token_id:
        raise EdgeVLMError(
            f"{path}: config image_token_id {model.config.image_token_id} != tokenizer's <image> id "
            f"{tokenizer.image_token_id}"
        )
    return model.eval(), tokenizer, meta
