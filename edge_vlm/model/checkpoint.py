"""Checkpoint directories: transformers' layout (config.json + safetensors) plus tokenizer and `edge_vlm.json`.

Safetensors only: nothing here unpickles (a .bin file is refused; `edge-vlm convert` reads legacy .bin with
`weights_only=True`). Writes are atomic: a temp dir beside the target, renamed into place.

Loading is strict: a weights file that is empty, truncated or not safetensors, an index that names a missing shard,
and tensors that are missing, unexpected or of the wrong shape for config.json are refused in one line that names
the file. transformers itself only warns about missing tensors and initialises them at random, which would give a
model that answers (badly) and exports as if it were trained.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_vlm.errors import EdgeVLMError
from edge_vlm.fileio import atomic_dir, owning
from edge_vlm.imaging import ImageConfig
from edge_vlm.tokenizer import TextTokenizer

META_FILE = "edge_vlm.json"
FORMAT = "edge-vlm-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


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
        from edge_vlm.prompting import TEMPLATE_NAMES, TEMPLATES

        if not isinstance(data, dict):
            raise EdgeVLMError(f"must be a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT or data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise EdgeVLMError(f"is format {data.get('format')!r} version {data.get('version')!r}; this edge-vlm "
                               f"reads {FORMAT!r} version {FORMAT_VERSION}")
        template = data.get("template", "phi-2_v0")
        known = sorted({*TEMPLATES, *TEMPLATE_NAMES})  # a stage-1 checkpoint records `plain`
        if template not in known:
            raise EdgeVLMError(f"names the template {template!r}, which is not one of {known}")
        if not isinstance(data.get("random_weights", False), bool):
            raise EdgeVLMError(f"random_weights must be true or false, got {data.get('random_weights')!r}")
        return cls(
            template=template,
            image=ImageConfig.from_dict(data.get("image", {})),
            random_weights=data.get("random_weights", False),
            source=str(data.get("source", "")),
        )


# --- reading weight files: every failure is one EdgeVLMError that names the file --------------------------------


def _few(keys, limit: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _safetensors_reason(exc: Exception) -> str:
    """safetensors' messages start with a generic prefix; keep the part that says what is wrong."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("Error while deserializing header: ", "")


def read_index(index: Path) -> dict[str, list[str]]:
    """A transformers shard index (`*.index.json`) -> {shard file name: [tensor names it holds]}. Each shard must be
    a plain file name beside the index, and must exist."""
    try:
        data = json.loads(index.read_bytes())
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bytes that are not UTF-8
        raise EdgeVLMError(f"cannot read the shard index {index}: {exc}") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise EdgeVLMError(f"{index}: no weight_map (tensor name -> shard file) in this shard index")
    shards: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise EdgeVLMError(f"{index}: tensor {key} is mapped to {name!r}, not a file name beside the index")
        shards.setdefault(name, []).append(key)
    for name in shards:
        if not (index.parent / name).is_file():
            raise EdgeVLMError(f"{index} names the shard {index.parent / name}, which does not exist")
    return shards


def safetensors_shapes(file: Path, floats_only: bool = False) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, which safetensors checks against the file's size: an empty,
    truncated or non-safetensors file is refused here, before any tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}
            shapes = {key: tuple(piece.get_shape()) for key, piece in slices.items()}
            dtypes = {key: piece.get_dtype() for key, piece in slices.items()}
    except (SafetensorError, OSError) as exc:
        raise EdgeVLMError(
            f"cannot read {file}: not a complete safetensors file ({_safetensors_reason(exc)})") from exc
    # `floats_only` (our checkpoints): every weight of the model is a float, and transformers would cast an integer
    # tensor to float without a word. A released checkpoint may also hold integer buffers (position ids).
    not_float = sorted(key for key, dtype in dtypes.items() if floats_only and dtype not in _FLOAT_DTYPES)
    if not_float:
        raise EdgeVLMError(f"{file}: {len(not_float)} tensors are not floating point ({_few(not_float)}: "
                           f"{dtypes[not_float[0]]}); the weights are damaged or not this model's")
    return shapes


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def _check_keys_in_shard(file: Path, keys, present, index_name: str) -> None:
    absent = [key for key in keys if key not in present]
    if absent:
        raise EdgeVLMError(f"{file} lacks {len(absent)} tensors that {index_name} puts there: {_few(absent)}")


def read_tensors(file: Path, keys: list[str] | None = None) -> dict:
    """Tensors from a safetensors file, or a legacy PyTorch `.bin` read with `torch.load(weights_only=True)` (no
    arbitrary unpickling). `keys`: only these (a shard index's share of the file); each must be there."""
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        present = safetensors_shapes(file)
        wanted = list(present) if keys is None else keys
        _check_keys_in_shard(file, wanted, present, "the shard index")
        try:
            with safe_open(str(file), "pt") as handle:
                return {key: handle.get_tensor(key) for key in wanted}
        except (SafetensorError, OSError) as exc:
            raise EdgeVLMError(f"cannot read {file}: {_safetensors_reason(exc)}") from exc
    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds (pickle, zip, RuntimeError) for a bad file
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0]  # torch adds paragraphs
        raise EdgeVLMError(f"cannot read {file} as PyTorch weights (weights_only=True): {first}") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise EdgeVLMError(f"{file} is not a state dict (tensor name -> tensor)")
    if keys is None:
        return state
    _check_keys_in_shard(file, keys, state, "the shard index")
    return {key: state[key] for key in keys}


def check_weight_files(directory: Path) -> list[Path]:
    """The safetensors files transformers will read for `directory` (model.safetensors, or the shards its index
    names), each checked to be whole and to hold what the index says."""
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        files = []
        for name, keys in read_index(index).items():
            file = directory / name
            _check_keys_in_shard(file, keys, safetensors_shapes(file, floats_only=True), WEIGHTS_INDEX)
            files.append(file)
        return files
    single = directory / WEIGHTS_FILE
    if not single.is_file():
        legacy = " (it has .bin weights: run `edge-vlm convert` first)" if any(directory.glob("*.bin")) else ""
        raise EdgeVLMError(f"no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX}) in {directory}{legacy}")
    safetensors_shapes(single, floats_only=True)
    return [single]


# --- checkpoint directories ----------------------------------------------------------------------------------------


def check_checkpoint_dir(directory: str | Path) -> Path:
    """Fail with a clear message unless `directory` looks like a checkpoint whose weight files are whole."""
    path = Path(directory)
    if not path.exists():
        raise EdgeVLMError(f"model directory not found: {path}")
    if not path.is_dir():
        raise EdgeVLMError(f"model path is not a directory: {path}")
    if not (path / "config.json").is_file():
        hint = " (it looks like a bundle: use --bundle)" if (path / "manifest.json").is_file() else ""
        raise EdgeVLMError(f"no config.json in {path}: not a model checkpoint directory{hint}")
    config = check_model_config(path / "config.json")
    check_weight_files(path)
    if not (path / "tokenizer.json").is_file():
        raise EdgeVLMError(f"no tokenizer.json in {path}")
    meta = read_meta(path)
    if meta.image is not None and (path / META_FILE).is_file():
        tower = config["vision_config"]["image_size"]
        if meta.image.image_size != tower:
            raise EdgeVLMError(f"{path / META_FILE}: image_size {meta.image.image_size} differs from the vision "
                               f"tower's {tower} in config.json")
    return path


# (section, key, least value) of the shapes a checkpoint's config.json must give as whole numbers. The upper bound
# keeps a damaged value from reaching an allocation (the largest real value, Phi-2's vocabulary, is 51,200).
_CONFIG_SIZES = [(section, key, least) for section in ("text_config", "vision_config")
                 for key, least in (("hidden_size", 1), ("intermediate_size", 1), ("num_hidden_layers", 1),
                                    ("num_attention_heads", 1))] + [
    ("text_config", "vocab_size", 1), ("text_config", "max_position_embeddings", 1),
    ("vision_config", "image_size", 1), ("vision_config", "patch_size", 1)]
_MAX_CONFIG_SIZE = 10_000_000


def check_model_config(config_path: Path) -> dict:
    """A checkpoint's config.json, read without transformers' config classes: a LLaVA config whose values pass
    check_config_values. transformers itself would end a damaged value in a traceback from deep inside the model (a
    division by zero, a strict-dataclass error) or an allocation."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgeVLMError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise EdgeVLMError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
    if config.get("model_type") != "llava":
        hint = " (a released LLaVA-Phi checkpoint: run `edge-vlm convert` first)" \
            if config.get("model_type") == "llava_phi" else ""
        raise EdgeVLMError(f"{config_path}: model_type is {config.get('model_type')!r}, expected 'llava'{hint}")
    for section in ("text_config", "vision_config"):
        if not isinstance(config.get(section), dict):
            raise EdgeVLMError(f"{config_path} has no {section} object")
    check_config_values(config, config_path)
    return config


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config_values(config: dict, where, names: dict[str, str] | None = None) -> None:
    """The rules for the values of a LLaVA config ({"text_config": {...}, "vision_config": {...}}): shapes are whole
    numbers in a sane range, widths divisible by their head counts, known activations, finite rope settings and norm
    epsilons. No value is coerced: a string where a number belongs is refused. `where` names the file in messages;
    `names` how it spells each section's keys (`edge-vlm convert` checks a released config, which keeps Phi's keys at
    the top level, with these same rules)."""
    from transformers.activations import ACT2FN

    names = names or {"text_config": "text_config.", "vision_config": "vision_config."}
    for section, key, least in _CONFIG_SIZES:
        value = config[section].get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= _MAX_CONFIG_SIZE:
            shown = "missing" if key not in config[section] else repr(value)
            raise EdgeVLMError(f"{where}: {names[section]}{key} is {shown}, not a whole number from {least} to "
                               f"{_MAX_CONFIG_SIZE:,}")
    for section in ("text_config", "vision_config"):
        values, label = config[section], names[section]
        width, heads = values["hidden_size"], values["num_attention_heads"]
        if width % heads:
            raise EdgeVLMError(f"{where}: {label}hidden_size {width} is not divisible by its {heads} attention heads")
        act = values.get("hidden_act", "gelu_new" if section == "text_config" else "quick_gelu")
        if not isinstance(act, str) or act not in ACT2FN:
            raise EdgeVLMError(f"{where}: {label}hidden_act is {act!r}, not an activation transformers knows")
        eps = values.get("layer_norm_eps", 1e-5)
        if not (isinstance(eps, float) and 0 < eps < float("inf")):
            raise EdgeVLMError(f"{where}: {label}layer_norm_eps is {eps!r}, not a positive finite decimal number")
    text, label = config["text_config"], names["text_config"]
    kv_heads = text.get("num_key_value_heads")  # None: as many as the attention heads
    if kv_heads is not None and (isinstance(kv_heads, bool) or not isinstance(kv_heads, int) or kv_heads < 1
                                 or text["num_attention_heads"] % kv_heads):
        raise EdgeVLMError(f"{where}: {label}num_key_value_heads is {kv_heads!r}, not a whole number that divides "
                           f"the {text['num_attention_heads']} attention heads")
    if not isinstance(text.get("rope_parameters") or {}, dict):
        raise EdgeVLMError(f"{where}: {label}rope_parameters is {text['rope_parameters']!r}, not an object")
    rope = {**(text.get("rope_parameters") or {}), **{k: text[k] for k in ("rope_theta", "partial_rotary_factor")
                                                      if k in text}}
    theta, factor = rope.get("rope_theta", 10000.0), rope.get("partial_rotary_factor", 0.5)
    if not (_is_number(theta) and 0 < theta < float("inf")):
        raise EdgeVLMError(f"{where}: rope_theta is {theta!r}, not a positive finite number")
    if not (_is_number(factor) and 0 < factor <= 1):
        raise EdgeVLMError(f"{where}: partial_rotary_factor is {factor!r}, not in (0, 1]")


# Everything write_checkpoint puts in a checkpoint folder (transformers' save_pretrained: config, generation config,
# one weights file or shards with their index; our tokenizer, preprocessing and edge_vlm.json). `--force` replaces
# an earlier checkpoint only when it holds nothing else: a file the user saved there is never deleted.
CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                    "preprocessor_config.json", META_FILE)


@owning(CHECKPOINT_FILES)
def is_checkpoint_dir(path: Path) -> bool:
    """A folder edge-vlm wrote as a checkpoint (its edge_vlm.json says so): the only kind `--force` may replace (and
    only when it holds no file but CHECKPOINT_FILES)."""
    try:
        return json.loads((Path(path) / META_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_meta(directory: str | Path) -> CheckpointMeta:
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        return CheckpointMeta()
    try:
        return CheckpointMeta.from_dict(json.loads(meta_path.read_text(encoding="utf-8")))
    except EdgeVLMError as exc:
        raise EdgeVLMError(f"{meta_path}: {exc}") from exc
    except (ValueError, TypeError, AttributeError) as exc:
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


def write_checkpoint(model, tokenizer: TextTokenizer, folder: Path, meta: CheckpointMeta | None = None) -> None:
    """Write model (safetensors), tokenizer, preprocessing and edge_vlm.json into an existing (temp) folder."""
    meta = meta or CheckpointMeta()
    meta.image = meta.image or ImageConfig(image_size=model.config.vision_config.image_size)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save(folder, model_max_length=model.config.text_config.max_position_embeddings)
    _write_preprocessor_config(folder, meta.image)
    (folder / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")


def save_checkpoint(model, tokenizer: TextTokenizer, directory: str | Path, meta: CheckpointMeta | None = None,
                    force: bool = True) -> Path:
    """Write a checkpoint atomically (`force` replaces only an earlier checkpoint or an empty folder)."""
    target = Path(directory)
    with atomic_dir(target, force=force, replaceable=is_checkpoint_dir, what="checkpoint") as tmp:
        write_checkpoint(model, tokenizer, tmp, meta)
    return target


@contextmanager
def _without_load_report():
    """transformers logs a table of missing / unexpected / mis-shaped tensors as a warning; we refuse those in one
    line of our own instead, so the table is kept off stderr."""
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def refuse_partial_load(path: Path, info: dict) -> None:
    """One error for any tensor that transformers reports missing, unexpected or mis-shaped (`output_loading_info`).
    Non-persistent buffers (rotary inv_freq, position_ids) are not in a state dict and never reported."""
    problems = []
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        problems.append(f"{len(missing)} tensors missing ({_few(missing)})")
    if info.get("unexpected_keys"):
        unexpected = sorted(info["unexpected_keys"])
        problems.append(f"{len(unexpected)} unexpected tensors ({_few(unexpected)})")
    if info.get("mismatched_keys"):
        shapes = [f"{key} is {tuple(got)}, config.json needs {tuple(want)}"
                  for key, got, want in sorted(info["mismatched_keys"])]
        problems.append(f"{len(shapes)} tensors of the wrong shape ({_few(shapes, 2)})")
    if problems:
        weights = path / (WEIGHTS_INDEX if (path / WEIGHTS_INDEX).is_file() else WEIGHTS_FILE)
        raise EdgeVLMError(f"{weights} does not fit {path / 'config.json'}: {'; '.join(problems)}")


def refuse_non_finite(path: Path, model) -> None:
    """A NaN or infinity anywhere in the weights is damage (a diverged run, a bad copy): refuse it by name, before a
    question is asked. One pass over the weights: about a second for the full-size model. `model`: a model, or a
    dict of tensors (a weight file's, named as the file names them)."""
    import torch

    tensors = model if isinstance(model, dict) else model.state_dict()
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise EdgeVLMError(f"{path}: the weight {name} holds NaN or infinity; the checkpoint is damaged")


def load_checkpoint(directory: str | Path, dtype=None, device: str | None = None, **load_kwargs):
    """(model, tokenizer, meta) from a checkpoint directory; the model is in eval mode. Every tensor the config
    calls for must be in the weights, with its shape, and nothing else."""
    from safetensors import SafetensorError

    from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration

    path = check_checkpoint_dir(directory)
    tokenizer = TextTokenizer.from_dir(path)
    meta = read_meta(path)
    try:
        with _without_load_report():
            # ignore_mismatched_sizes: report a wrong shape through `info` (refused below) instead of a RuntimeError
            # whose message points at a table we keep off the screen.
            model, info = LlavaPhiForConditionalGeneration.from_pretrained(
                path, use_safetensors=True, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True,
                **load_kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise EdgeVLMError(f"cannot load the model in {path}: {exc}") from exc
    refuse_partial_load(path, info)
    refuse_non_finite(path, model)
    if device is not None:
        model = model.to(device)
    if model.config.image_token_id != tokenizer.image_token_id:
        raise EdgeVLMError(
            f"{path}: config image_token_id {model.config.image_token_id} != tokenizer's <image> id "
            f"{tokenizer.image_token_id}"
        )
    return model.eval(), tokenizer, meta


def check_checkpoint(directory: str | Path, finite: bool = True) -> Path:
    """What load_checkpoint refuses, found without building the model's weights: the folder and its weight files
    (check_checkpoint_dir), every tensor config.json calls for there with its shape and nothing else (transformers'
    own loading report, on the meta device: no weight is read) and, with `finite`, every float weight finite (read
    one tensor at a time). `info` runs it, so a checkpoint that every loading verb refuses is not called fine."""
    from safetensors import SafetensorError, safe_open

    from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration

    path = check_checkpoint_dir(directory)
    try:
        with _without_load_report():
            _, info = LlavaPhiForConditionalGeneration.from_pretrained(
                path, use_safetensors=True, device_map="meta", output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise EdgeVLMError(f"cannot load the model in {path}: {exc}") from exc
    refuse_partial_load(path, info)
    for file in check_weight_files(path) if finite else []:
        try:
            with safe_open(str(file), "pt") as handle:
                for name in handle.keys():  # one tensor in memory at a time
                    refuse_non_finite(file, {name: handle.get_tensor(name)})
        except (SafetensorError, OSError) as exc:
            raise EdgeVLMError(f"cannot read {file}: {_safetensors_reason(exc)}") from exc
    return path
