"""Convert a released LLaVA-Phi checkpoint (LP layout, reference §7) into the project's checkpoint format.

transformers' own `convert_llava_weights_to_hf.py` does not handle LP (different nesting, Llama token ids), so the
key mapping is written here. Weights are read from safetensors, or from legacy `.bin` files with
`torch.load(weights_only=True)` (no arbitrary unpickling). Any key that is neither mapped nor expected is an error
that lists the missing and unexpected keys: an unknown layout is refused, never half-loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageConfig
from edge_vlm.model.checkpoint import CheckpointMeta, save_checkpoint
from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration, make_config
from edge_vlm.tokenizer import TextTokenizer

_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                "image_size", "hidden_act", "layer_norm_eps", "projection_dim", "num_channels")
_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "layer_norm_eps", "qk_layernorm")


def read_lp_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise EdgeVLMError(f"no config.json in {directory}: not a checkpoint directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgeVLMError(f"{path} is not valid JSON: {exc}") from exc
    if config.get("model_type") != "llava_phi":
        raise EdgeVLMError(f"{path}: model_type is {config.get('model_type')!r}, expected 'llava_phi' (LLaVA-Phi, LP layout)")
    if "vision_tower" not in config.get("vision_config", {}):
        raise EdgeVLMError(f"{path}: no vision_config.vision_tower section (LP layout expected)")
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
    # a lost partial_rotary_factor silently falls back to 0.5 and the logits drift (reference §7).
    rope = config.get("rope_parameters") or {}
    text["partial_rotary_factor"] = config.get("partial_rotary_factor", rope.get("partial_rotary_factor", 0.4))
    text["rope_theta"] = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    for key in ("bos_token_id", "eos_token_id"):
        if isinstance(config.get(key), int):
            text[key] = config[key]
    return {"vision": vision, "text": text, "image_token_id": None}


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    if files:
        for file in files:
            state.update(load_file(str(file)))
        return state
    files = sorted(directory.glob("pytorch_model*.bin")) or sorted(directory.glob("*.bin"))
    if not files:
        raise EdgeVLMError(f"no weights (*.safetensors or *.bin) in {directory}")
    for file in files:
        try:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as exc:  # weights_only refuses anything but tensors: say so plainly
            raise EdgeVLMError(f"cannot read {file} safely (weights_only=True): {exc}") from exc
    return state


def split_fused_qkv(tensor: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LP's fused query_key_value rows are laid out [heads, 3 (q,k,v), head_dim] (reference §7)."""
    rows = tensor.shape[0]
    head_dim = rows // (3 * num_heads)
    grouped = tensor.reshape(num_heads, 3, head_dim, *tensor.shape[1:])
    return tuple(grouped[:, j].reshape(num_heads * head_dim, *tensor.shape[1:]) for j in range(3))


_RENAMES = [
    (re.compile(r"^model\.mm_projector\.0\."), "model.multi_modal_projector.linear_1."),
    (re.compile(r"^model\.mm_projector\.2\."), "model.multi_modal_projector.linear_2."),
    # LLaVA-1.5 nests one level deeper (vision_tower.vision_tower); LP does not. Accept both.
    (re.compile(r"^model\.vision_tower\.vision_tower\.vision_model\."), "model.vision_tower.vision_model."),
    (re.compile(r"^model\.vision_tower\.vision_model\."), "model.vision_tower.vision_model."),
    (re.compile(r"^model\.(embed_tokens|layers|final_layernorm)\."), r"model.language_model.\1."),
    (re.compile(r"^lm_head\."), "lm_head."),
]


def map_lp_state_dict(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """Rename LP keys to transformers' Llava keys, splitting fused q/k/v. Unknown keys are kept as they are, so the
    caller's strict comparison reports them as unexpected."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = key
        for pattern, replacement in _RENAMES:
            if pattern.search(key):
                new_key = pattern.sub(replacement, key)
                break
        if ".self_attn.query_key_value." in new_key:
            q, k, v = split_fused_qkv(value, num_heads)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                out[new_key.replace("query_key_value", name)] = part
            continue
        out[new_key] = value
    # Buffers some versions save (rotary caches, position ids) carry no weights.
    return {k: v for k, v in out.items() if not k.endswith((".inv_freq", "position_ids"))}


def load_lp_tokenizer(directory: Path) -> TextTokenizer:
    """tokenizer.json if present, else GPT-2 style vocab.json + merges.txt (+ added_tokens.json)."""
    if (directory / "tokenizer.json").is_file():
        return TextTokenizer.from_dir(directory)
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise EdgeVLMError(f"no tokenizer in {directory}: need tokenizer.json or vocab.json + merges.txt")
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    backend = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    added_path = directory / "added_tokens.json"
    added = json.loads(added_path.read_text()) if added_path.is_file() else {}
    for text, _ in sorted(added.items(), key=lambda item: item[1]):
        backend.add_special_tokens([AddedToken(text, special=True, normalized=False)])
    backend.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return TextTokenizer(backend)


def convert_lp_checkpoint(src: str | Path, dst: str | Path, force: bool = False) -> Path:
    """Convert an LP checkpoint directory `src` into a project checkpoint at `dst` (atomic write)."""
    src = Path(src)
    if not src.is_dir():
        raise EdgeVLMError(f"source checkpoint directory not found: {src}")
    dst = Path(dst)
    if dst.exists() and not force:
        raise EdgeVLMError(f"{dst} already exists; pass --force to overwrite it")
    lp_config = read_lp_config(src)
    tokenizer = load_lp_tokenizer(src)
    spec = lp_spec(lp_config)
    config = make_config(spec, image_token_id=tokenizer.image_token_id)
    state = map_lp_state_dict(read_weights(src), config.text_config.num_attention_heads)
    with torch.device("meta"):
        expected = set(LlavaPhiForConditionalGeneration(config).state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise EdgeVLMError(
            f"unknown checkpoint layout in {src}: {len(missing)} missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}; {len(unexpected)} unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    model = LlavaPhiForConditionalGeneration(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    aspect = "pad" if lp_config.get("image_aspect_ratio", "pad") == "pad" else "square"
    image = ImageConfig(image_size=config.vision_config.image_size, aspect=aspect)
    meta = CheckpointMeta(image=image, source=f"converted from LP checkpoint {src.resolve()}")
    return save_checkpoint(model.eval(), tokenizer, dst, meta, force=force)
