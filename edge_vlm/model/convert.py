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
from edge_vlm.fileio import atomic_dir, check_replaceable
from edge_vlm.imaging import ASPECT_MODES, ImageConfig
from edge_vlm.model.checkpoint import (
    CheckpointMeta,
    check_config_values,
    is_checkpoint_dir,
    read_index,
    read_tensors,
    refuse_non_finite,
    write_checkpoint,
)
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
    if not isinstance(vision.get("mm_projector"), dict):  # LLaVA-Phi builds its projector from this section
        raise EdgeVLMError(f"{path}: no vision_config.mm_projector section (LP layout expected)")
    return config


# How an LP config.json spells the keys of each section, for messages: Phi's keys sit at the top level.
_LP_NAMES = {"text_config": "", "vision_config": "vision_config.vision_tower."}


_MISSING = object()


def _refuse(path: Path, key: str, value, wanted: str, missing: str = ""):
    shown = f"missing{missing}" if value is _MISSING else repr(value)
    raise EdgeVLMError(f"{path}: {key} is {shown}; {wanted}")


def lp_aspect(config: dict, path: Path) -> str:
    """The preprocessing mode. LLaVA-Phi pads only for 'pad' and reads a missing key (None) as CLIP's plain
    processing, which is edge-vlm's 'square'; any other value (LLaVA-NeXT's 'anyres'...) is another model's."""
    aspect = config.get("image_aspect_ratio")
    if aspect is None:
        return "square"
    if aspect not in ASPECT_MODES:  # LLaVA-Phi's two modes are edge-vlm's
        _refuse(path, "image_aspect_ratio", aspect, f"accepted: {', '.join(map(repr, ASPECT_MODES))} (LLaVA-Phi's "
                "preprocessing modes; other values belong to other models)")
    return aspect


def check_lp_settings(config: dict, path: Path) -> None:
    """The keys check_config_values does not cover, read with LLaVA-Phi's defaults for a missing one: each must be
    a value edge-vlm's model reproduces exactly, else it is refused (never silently changed)."""
    _check_lp_vision(config, path)
    _check_lp_text(config, path)


def _check_lp_vision(config: dict, path: Path) -> None:
    tower, projector = config["vision_config"]["vision_tower"], config["vision_config"]["mm_projector"]
    layers = tower["num_hidden_layers"]
    # hidden_states has layers + 1 entries: -2 and layers - 1 name the same, second-to-last one
    layer = tower.get("mm_vision_select_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int) or layer not in (-2, layers - 1):
        _refuse(path, "vision_config.vision_tower.mm_vision_select_layer", layer,
                "edge-vlm takes the features of the second-to-last CLIP layer only (-2, LLaVA-Phi's setting)")
    feature = tower.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        _refuse(path, "vision_config.vision_tower.mm_vision_select_feature", feature,
                "edge-vlm takes the patch features without CLS only ('patch', LLaVA-Phi's setting)")
    kind = projector.get("mm_projector_type", _MISSING)
    if kind != "mlp2x_gelu":
        _refuse(path, "vision_config.mm_projector.mm_projector_type", kind,
                "edge-vlm implements the two-layer GELU projector 'mlp2x_gelu' only", " (LLaVA-Phi reads 'linear')")
    # The projector's widths repeat the tower's and Phi's (LLaVA-Phi builds the layers from them): one that
    # contradicts them describes other weights. Missing, the weights' shapes are checked against config.json anyway.
    for key, wanted in (("mm_hidden_size", tower["hidden_size"]), ("hidden_size", config["hidden_size"])):
        value = projector.get(key, wanted)
        if type(value) is not int or value != wanted:
            _refuse(path, f"vision_config.mm_projector.{key}", value,
                    f"the projector must map the vision tower's width to Phi's ({wanted})")
    if type(tower.get("num_channels", 3)) is not int or tower.get("num_channels", 3) != 3:
        _refuse(path, "vision_config.vision_tower.num_channels", tower["num_channels"], "CLIP reads RGB images (3)")
    dim = tower.get("projection_dim", 512)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        _refuse(path, "vision_config.vision_tower.projection_dim", dim, "expected a whole number from 1")


def _check_lp_text(config: dict, path: Path) -> None:
    rope_type = (config.get("rope_parameters") or {}).get("rope_type", "default")
    if config.get("rope_scaling") is not None or rope_type != "default":
        scaling = config.get("rope_scaling")
        _refuse(path, "rope_scaling" if scaling is not None else "rope_parameters.rope_type",
                scaling if scaling is not None else rope_type, "edge-vlm implements Phi-2's unscaled rotary "
                "embedding only (rope_scaling null)")
    for key, allowed in (("mm_use_im_start_end", "edge-vlm's prompts do not wrap the image in <im_start> "
                                                  "<im_end> tokens (false, LLaVA-Phi's setting)"),
                         ("tie_word_embeddings", "Phi-2's output layer is its own (false)"),
                         ("qk_layernorm", "Phi-2 has no q/k layer norms (false)")):
        if config.get(key, False) is not False:
            _refuse(path, key, config[key], allowed)
    for key in ("bos_token_id", "eos_token_id"):
        token = config.get(key)
        if token is not None and (isinstance(token, bool) or not isinstance(token, int)
                                  or not 0 <= token < config["vocab_size"]):
            _refuse(path, key, token, f"expected a token id from 0 to {config['vocab_size'] - 1}, or null")


def lp_spec(config: dict, path: Path) -> dict:
    """A preset-style dict (see presets.py) from an LP config.json, checked first with the rules an edge-vlm
    config.json is checked with (checkpoint.check_config_values), then with LLaVA-Phi's own settings."""
    vision = {k: config["vision_config"]["vision_tower"][k] for k in _VISION_KEYS
              if k in config["vision_config"]["vision_tower"]}
    text = {k: config[k] for k in _TEXT_KEYS if k in config}
    # transformers 4.36 wrote the rope settings at the top level, 5.x inside rope_parameters: both are read, and
    # carried explicitly, since a lost partial_rotary_factor silently falls back to 0.5 and the logits drift.
    text.update({k: config[k] for k in ("rope_parameters", "rope_theta", "partial_rotary_factor") if k in config})
    check_config_values({"text_config": text, "vision_config": vision}, path, names=_LP_NAMES)
    check_lp_settings(config, path)
    rope = {**(text.pop("rope_parameters", None) or {}), **text}
    # A missing key means what it meant to LLaVA-Phi: transformers 4.36 PhiConfig's defaults.
    text["rope_theta"] = rope.get("rope_theta", 10000.0)
    text["partial_rotary_factor"] = rope.get("partial_rotary_factor", 0.5)
    text.update({k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config})
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
    """Every tensor of a release; a missing shard is refused (weight_sources) before any tensor is read, a NaN or
    infinity anywhere as load_checkpoint refuses it."""
    state: dict[str, torch.Tensor] = {}
    for file, keys in weight_sources(directory):
        tensors = read_tensors(file, keys)
        refuse_non_finite(file, tensors)  # named as the file names it, before anything is written
        state.update(tensors)
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
    spec = lp_spec(lp_config, src / "config.json")  # every value checked before anything is built or read
    aspect = lp_aspect(lp_config, src / "config.json")
    tokenizer = load_lp_tokenizer(src)
    if len(tokenizer) > spec["text"]["vocab_size"]:  # a token id past the embedding's rows has no vector
        raise EdgeVLMError(f"{src}: the tokenizer (with <image>) has {len(tokenizer)} tokens, more than the "
                           f"vocab_size {spec['text']['vocab_size']} of config.json")
    config = make_config(spec, image_token_id=tokenizer.image_token_id)
    dst = Path(dst)
    check_replaceable(dst, force, is_checkpoint_dir, "checkpoint")  # what atomic_dir refuses, before the slow reading
    state = map_lp_state_dict(read_weights(src), config.text_config.num_attention_heads)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in LlavaPhiForConditionalGeneration(config).state_dict().items()}
    check_against_model(state, expected, src)
    model = LlavaPhiForConditionalGeneration(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    image = ImageConfig(image_size=config.vision_config.image_size, aspect=aspect)
    # The folder's name only: a written file never records where the user keeps things.
    meta = CheckpointMeta(image=image, source=f"converted from LP checkpoint {src.resolve().name}")
    with atomic_dir(dst, force=force, replaceable=is_checkpoint_dir, what="checkpoint") as tmp:
        write_checkpoint(model.eval(), tokenizer, tmp, meta)
    return dst
