"""Convert a released LLaVA-Phi checkpoint (the "LP layout") into the project's checkpoint format.

The layout, and every rename done here, is described in docs/checkpoint-layout.md. In short: LP's checkpoints were
saved by transformers 4.36, so the vision tower sits under `model.vision_tower.vision_model.*` (transformers 5 has no
`vision_model.` level), Phi's attention may be one fused `query_key_value` (rows laid out [head, (q,k,v), head_dim]),
the projector is `model.mm_projector.0/2`, `lm_head` has a bias, and the rope settings are top-level config keys.

transformers' own `convert_llava_weights_to_hf.py` does not handle LP (different nesting, Llama token ids), so the
key mapping is written here. Weights are read from safetensors, or from legacy `.bin` files with
`torch.load(weights_only=True)` (no arbitrary unpickling), single-file or sharded with an index. Every tensor the
model needs must be there with its shape, and nothing else: an unknown layout is refused, never half-loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from edge_vlm.errors import EdgeVLMError
from edge_vlm.fileio import atomic_dir
from edge_vlm.imaging import ImageConfig
from edge_vlm.model.checkpoint import CheckpointMeta, is_checkpoint_dir, read_index, read_tensors, write_checkpoint
from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration, make_config
from edge_vlm.tokenizer import TextTokenizer

_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                "image_size", "hidden_act", "layer_norm_eps", "projection_dim", "num_channels")
_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "layer_norm_eps", "qk_layernorm")
# Weight files in the order transformers looks for them: an index (sharded) before a single file, safetensors first.
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin")


def read_lp_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise EdgeVLMError(f"no config.json in {directory}: not a checkpoint directory")
    try:
        config = json.loads(path.read_bytes())
    except ValueError as exc:  # bad JSON, or bytes that are not UTF-8 text
        raise EdgeVLMError(f"{path} is not a JSON config: {exc}") from exc
    if not isinstance(config, dict):
        raise EdgeVLMError(f"{path} is not a JSON object")
    if config.get("model_type") != "llava_phi":
        raise EdgeVLMError(f"{path}: model_type is {config.get('model_type')!r}, expected 'llava_phi' (LLaVA-Phi, LP layout)")
    vision = config.get("vision_config")
    if not isinstance(vision, dict) or not isinstance(vision.get("vision_tower"), dict):
        raise EdgeVLMError(f"{path}: no vision_config.vision_tower section (LP layout expected)")
    if not isinstance(vision.get("mm_projector", {}), dict):
        raise EdgeVLMError(f"{path}: vision_config.mm_projector is not a section")
    return config


def lp_spec(config: dict) -> dict:
    """A preset-style dict (see presets.py) from an LP config.json."""
    tower = config["vision_config"]["vision_tower"]
    projector = config["vision_config"].get("mm_projector", {})
    if tower.get("mm_vision_select_layer", -2) != -2 or tower.get("mm_vision_select_feature", "patch") != "patch":
        raise EdgeVLMError("only mm_vision_select_layer -2 with 'patch' features is supported (LLaVA-Phi's setting)")
    if projector.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise EdgeVLMError(f"projector type {projector.get('mm_projector_type')!r} is not supported (mlp2x_gelu only)")
    vision = {k: tower[k] for k in _VISION_KEYS if k in tower}
    text = {k: config[k] for k in _TEXT_KEYS if k in config}
    # transformers 4.36 wrote the rope settings at the top level, 5.x inside rope_parameters. Carry them explicitly:
    # a lost partial_rotary_factor silently falls back to 0.5 and the logits drift.
    rope = config.get("rope_parameters") or {}
    text["partial_rotary_factor"] = config.get("partial_rotary_factor", rope.get("partial_rotary_factor", 0.4))
    text["rope_theta"] = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    for key in ("bos_token_id", "eos_token_id"):
        if isinstance(config.get(key), int):
            text[key] = config[key]
    return {"vision": vision, "text": text, "image_token_id": None}


def weight_sources(directory: Path) -> list[tuple[Path, list[str] | None]]:
    """(file, the tensor names to take from it, or None for all) for the checkpoint's weights: exactly the shards an
    index names, else the single file. Other stray weight files are not read."""
    for name in _INDEXES:
        index = directory / name
        if index.is_file():
            return [(directory / shard, keys) for shard, keys in read_index(index).items()]
    for name in _SINGLES:
        if (directory / name).is_file():
            return [(directory / name, None)]
    found = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    extra = f" (found {', '.join(found[:4])} but no index naming them)" if found else ""
    raise EdgeVLMError(f"no weights in {directory}: expected {' or '.join(_SINGLES)}, or a shard index "
                       f"({' or '.join(_INDEXES)}){extra}")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a release; a missing shard is refused (weight_sources) before any tensor is read."""
    state: dict[str, torch.Tensor] = {}
    for file, keys in weight_sources(directory):
        state.update(read_tensors(file, keys))
    return state


def split_fused_qkv(tensor: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LP's fused query_key_value rows are laid out [heads, 3 (q,k,v), head_dim] (docs/checkpoint-layout.md)."""
    rows = tensor.shape[0]
    head_dim = rows // (3 * num_heads)
    grouped = tensor.reshape(num_heads, 3, head_dim, *tensor.shape[1:])
    return tuple(grouped[:, j].reshape(num_heads * head_dim, *tensor.shape[1:]) for j in range(3))


_RENAMES = [
    (re.compile(r"^model\.mm_projector\.0\."), "model.multi_modal_projector.linear_1."),
    (re.compile(r"^model\.mm_projector\.2\."), "model.multi_modal_projector.linear_2."),
    # transformers 4.x's CLIPVisionModel had a `vision_model.` level that 5.x dropped. LP nests the tower once
    # (vision_tower.vision_model), LLaVA-1.5 twice (vision_tower.vision_tower.vision_model): accept both.
    (re.compile(r"^model\.vision_tower\.(vision_tower\.)?vision_model\."), "model.vision_tower."),
    (re.compile(r"^model\.(embed_tokens|layers|final_layernorm)\."), r"model.language_model.\1."),
]
# Buffers some versions saved (rotary caches, position ids): derived from the config, they carry no weights.
_BUFFERS = re.compile(r"\.(position_ids|inv_freq|original_inv_freq)$")


def map_lp_state_dict(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """Rename LP keys to transformers' Llava keys, splitting fused q/k/v. Unknown keys are kept as they are, so the
    caller's strict comparison reports them as unexpected."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _BUFFERS.search(key):
            continue
        new_key = key
        for pattern, replacement in _RENAMES:
            if pattern.search(key):
                new_key = pattern.sub(replacement, key)
                break
        if ".self_attn.query_key_value." in new_key:
            if value.shape[0] % (3 * num_heads):
                raise EdgeVLMError(f"{key} has {value.shape[0]} rows, not a multiple of 3 x {num_heads} heads")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), split_fused_qkv(value, num_heads)):
                out[new_key.replace("query_key_value", name)] = part
            continue
        out[new_key] = value
    return out


def check_against_model(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], src: Path) -> None:
    """Every tensor the model needs, with its shape, and nothing else; else one error that lists a few of each."""
    def few(items):
        return f"{items[:6]}{' ...' if len(items) > 6 else ''}"

    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise EdgeVLMError(f"unknown checkpoint layout in {src}: {len(missing)} missing keys {few(missing)}; "
                           f"{len(unexpected)} unexpected keys {few(unexpected)}")
    shapes = [f"{k} {tuple(state[k].shape)} (config.json needs {tuple(s)})"
              for k, s in sorted(expected.items()) if state[k].shape != s]
    if shapes:
        raise EdgeVLMError(f"{src}: {len(shapes)} tensors do not fit config.json: {few(shapes)}")


def load_lp_tokenizer(directory: Path) -> TextTokenizer:
    """tokenizer.json if present, else GPT-2 style vocab.json + merges.txt (+ added_tokens.json)."""
    if (directory / "tokenizer.json").is_file():
        return TextTokenizer.from_dir(directory)
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise EdgeVLMError(f"no tokenizer in {directory}: need tokenizer.json or vocab.json + merges.txt")
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    added_path = directory / "added_tokens.json"
    try:
        added = json.loads(added_path.read_bytes()) if added_path.is_file() else {}
        ordered = sorted(added.items(), key=lambda item: item[1])
        backend = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception for malformed files
        raise EdgeVLMError(f"cannot read the tokenizer in {directory} (vocab.json, merges.txt, added_tokens.json): "
                           f"{exc}") from exc
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    for text, _ in ordered:
        backend.add_special_tokens([AddedToken(text, special=True, normalized=False)])
    backend.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return TextTokenizer(backend)


def convert_lp_checkpoint(src: str | Path, dst: str | Path, force: bool = False) -> Path:
    """Convert an LP checkpoint directory `src` into a project checkpoint at `dst` (atomic write; `force` replaces
    only an earlier checkpoint or an empty folder)."""
    src = Path(src)
    if not src.is_dir():
        raise EdgeVLMError(f"source checkpoint directory not found: {src}")
    lp_config = read_lp_config(src)
    tokenizer = load_lp_tokenizer(src)
    try:
        config = make_config(lp_spec(lp_config), image_token_id=tokenizer.image_token_id)
    except (TypeError, ValueError, KeyError) as exc:  # a value of the wrong type or range in config.json
        raise EdgeVLMError(f"{src / 'config.json'}: {exc}") from exc
    dst = Path(dst)
    if (dst.exists() or dst.is_symlink()) and not force:  # the common slip, refused before the slow reading
        raise EdgeVLMError(f"{dst} already exists; pass --force to replace it")
    state = map_lp_state_dict(read_weights(src), config.text_config.num_attention_heads)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in LlavaPhiForConditionalGeneration(config).state_dict().items()}
    check_against_model(state, expected, src)
    model = LlavaPhiForConditionalGeneration(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    aspect = "pad" if lp_config.get("image_aspect_ratio", "pad") == "pad" else "square"
    image = ImageConfig(image_size=config.vision_config.image_size, aspect=aspect)
    # The folder's name only: a written file never records where the user keeps things.
    meta = CheckpointMeta(image=image, source=f"converted from LP checkpoint {src.resolve().name}")
    with atomic_dir(dst, force=force, replaceable=is_checkpoint_dir, what="checkpoint") as tmp:
        write_checkpoint(model.eval(), tokenizer, tmp, meta)
    return dst
