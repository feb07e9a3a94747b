"""The training configuration: one dataclass that validates itself, loaded from YAML presets with `--key value` overrides.

A preset file is either one stage (flat keys) or a plan of stages run in sequence:

    output_dir: runs/builtin        # shared keys apply to every stage
    stages:
      - {name: pretrain, stage: pretrain, lr: 1.0e-3, ...}
      - {name: finetune, stage: finetune, lr: 2.0e-5, ...}

In a plan, each stage writes to `{output_dir}/{name}` and starts from the previous stage's `final/` checkpoint unless it
names its own `init_from`. Overrides: `--key value` applies to every stage, `--name.key value` to the stage `name`.
Values are parsed as YAML scalars (`--lr 1e-4`, `--trainable [projector,llm]`, `--betas 0.9,0.98`).
Torch-free, so `edge-vlm train --help` and config errors stay instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from edge_vlm.configfile import read_yaml_mapping
from edge_vlm.errors import EdgeVLMError

STAGES = ("sft", "pretrain", "finetune")
# The parts a stage can train. `llm` is Phi's embeddings, layers and final LayerNorm; `lm_head` is separate because
# LP's stage 1 trains it as a side effect of its freezing code (docs/recipe.md).
PARTS = ("vision_tower", "projector", "llm", "lm_head")
STAGE_TRAINABLE = {
    "sft": ("llm", "lm_head"),  # Phi-2 alone on text
    "pretrain": ("projector",),  # the paper's stage 1
    "finetune": ("projector", "llm", "lm_head"),  # the paper's stage 2
}
STAGE_TEMPLATE = {"sft": "phi-2_v0", "pretrain": "plain", "finetune": "phi-2_v0"}
# LLaVA-1.5's scripts: stage 1 resizes + center-crops (no image_aspect_ratio flag), stage 2 pads (docs/preprocessing.md).
STAGE_ASPECT = {"sft": "pad", "pretrain": "square", "finetune": "pad"}
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "no", "bf16", "fp16")
DATA_FORMATS = ("auto", "llava", "sharegpt")
# Phi's Linear layers (transformers names); LoRA goes on the language model's copies only (see edge_vlm.train.lora).
PHI_LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
# Top-level keys of a plan file that are steps around the stages, not stage keys (see plan_steps).
PLAN_STEPS = ("synth", "vision_pretrain", "evaluate")
# The allowed range of every number (validate): (lowest, highest) for integers; (low, high, low excluded, high
# excluded) for floats. Every float must be finite: NaN or inf would train to NaN or never end.
_INT_RANGES = {
    "global_batch_size": (1,), "per_device_batch_size": (1,), "num_epochs": (1,), "max_steps": (1,),
    "log_every_steps": (1,), "num_threads": (1,), "model_max_length": (1,), "tokenizer_vocab_size": (1,),
    "lora_alpha": (1,), "num_workers": (0,), "save_every_steps": (0,), "keep_checkpoints": (0,), "lora_r": (0,),
    "warmup_steps": (0,),
    "seed": (0, 2**32 - 1),  # numpy's seed range (accelerate's set_seed seeds numpy too)
}
_FLOAT_RANGES = {
    "lr": (0, None, True, False), "eps": (0, None, True, False), "weight_decay": (0, None, False, False),
    "max_grad_norm": (0, None, False, False), "warmup_ratio": (0, 1, False, True), "lora_dropout": (0, 1, False, True),
}
# Keys holding a path: an empty string is refused (it would mean the current folder).
_PATH_KEYS = ("output_dir", "data_path", "image_root", "init_from", "tokenizer")
# A stage's name is a folder under the plan's output_dir.
_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ConfigError(EdgeVLMError):
    """A bad value of one key; `key` lets the caller say where the value came from (the file or the command line)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class TrainConfig:
    """Everything one training stage needs. Defaults are the paper's stage-2 recipe (docs/recipe.md)."""

    # -- what to train
    stage: str = "finetune"
    name: str = ""  # the stage's name inside a plan (sub-directory of output_dir)
    # -- the starting model: a checkpoint dir, or a preset (+ tokenizer) for from-scratch runs
    init_from: str | None = None
    model_preset: str | None = None  # a name in edge_vlm.model.presets, or "builtin" (edge_vlm.train.builtin)
    tokenizer: str | None = None  # dir with tokenizer.json, for from-scratch runs
    tokenizer_vocab_size: int | None = None  # else: train a byte-level BPE of this size offline on tokenizer_corpus
    tokenizer_corpus: list[str] | None = None  # data files whose text trains that tokenizer (default: data_path)
    # -- data
    data_path: str = ""
    data_format: str = "auto"  # auto: sharegpt for sft, llava otherwise
    image_root: str | None = None  # default: the data file's directory
    image_aspect: str | None = None  # pad | square; default per stage (STAGE_ASPECT)
    on_bad_sample: str = "skip"  # skip | stop (edge_vlm.data.validate; the report is printed either way)
    model_max_length: int | None = None  # default: the model's context length
    # -- batch and length of the run
    global_batch_size: int = 256
    per_device_batch_size: int = 16
    num_epochs: int = 1
    max_steps: int | None = None  # the run's length in optimizer steps, overriding num_epochs (the schedule too)
    drop_last: bool = False  # drop an epoch's last, incomplete global batch
    # LLaVA's --group_by_modality_length: global batches of samples of similar token length, so less of each step is
    # padding (the batches are padded to their longest sample); the batches' order stays random.
    group_by_length: bool = False
    num_workers: int = 0
    # -- optimizer and schedule (the paper: AdamW betas (0.9, 0.98), eps 1e-7, weight decay 0.1)
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-7
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0  # 0 disables clipping
    lr_schedule: str = "linear"
    warmup_ratio: float = 0.0  # LP's scripts: cosine with warmup_ratio 0.03
    warmup_steps: int | None = None  # overrides warmup_ratio
    # -- what is trainable: `trainable` replaces the stage's default parts; the two flags add LP's choices
    trainable: list[str] | None = None
    train_lm_head: bool = False  # LP stage 1: the lm_head trains along with the projector
    train_vision_tower: bool = False  # LP stage 2: the CLIP tower trains too
    # -- engine
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    gradient_checkpointing: bool = False
    num_threads: int | None = None  # torch CPU threads per process (None: torch's default); 1 for tiny models
    ddp_find_unused_parameters: bool | None = None  # None: on when images flow (text-only batches skip the projector)
    # -- LoRA / QLoRA (peft). lora_r 0 = full fine-tuning (the paper).
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(PHI_LINEAR_NAMES))
    qlora: bool = False  # 4-bit NF4 base (bitsandbytes) under the LoRA adapters
    lora_merge: bool = True  # write final/ as a plain checkpoint with the adapters merged in
    # -- records and checkpoints
    output_dir: str = "runs/train"
    save_every_steps: int = 0  # 0: only at the end of the run
    keep_checkpoints: int = 2  # training-state checkpoints kept (oldest deleted)
    log_every_steps: int = 1
    tensorboard: bool = False
    plot: bool = True
    progress: bool = True
    seed: int = 0

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def template(self) -> str:
        return STAGE_TEMPLATE[self.stage]

    @property
    def aspect(self) -> str:
        return self.image_aspect or STAGE_ASPECT[self.stage]

    @property
    def fmt(self) -> str:
        if self.data_format != "auto":
            return self.data_format
        return "sharegpt" if self.stage == "sft" else "llava"

    @property
    def trainable_parts(self) -> tuple[str, ...]:
        parts = list(self.trainable) if self.trainable is not None else list(STAGE_TRAINABLE[self.stage])
        if self.train_lm_head and "lm_head" not in parts:
            parts.append("lm_head")
        if self.train_vision_tower and "vision_tower" not in parts:
            parts.append("vision_tower")
        return tuple(p for p in PARTS if p in parts)

    @property
    def use_lora(self) -> bool:
        return self.lora_r > 0

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step so that per_device x accum x world == global batch (else a clear error)."""
        per_step = self.per_device_batch_size * world_size
        if world_size < 1 or self.global_batch_size % per_step:
            raise EdgeVLMError(
                f"global_batch_size {self.global_batch_size} is not a multiple of per_device_batch_size "
                f"{self.per_device_batch_size} x {world_size} process(es) = {per_step}: change --per_device_batch_size "
                "or --global_batch_size"
            )
        return self.global_batch_size // per_step

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every value; raise EdgeVLMError naming the key, the value and what is allowed."""
        self.betas = _floats(self.betas, "betas")
        if self.trainable is not None:
            self.trainable = [str(p) for p in _as_list(self.trainable, "trainable")]
        self.lora_target_modules = [str(m) for m in _as_list(self.lora_target_modules, "lora_target_modules")]
        if self.tokenizer_corpus is not None:
            self.tokenizer_corpus = [str(p) for p in _as_list(self.tokenizer_corpus, "tokenizer_corpus")]
        _choice("stage", self.stage, STAGES)
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("mixed_precision", self.mixed_precision, PRECISIONS)
        _choice("data_format", self.data_format, DATA_FORMATS)
        _choice("on_bad_sample", self.on_bad_sample, ("skip", "stop"))
        if self.image_aspect is not None:
            _choice("image_aspect", self.image_aspect, ("pad", "square"))
        for part in self.trainable or []:
            _choice("trainable", part, PARTS)
        if self.trainable is not None and not self.trainable:
            raise EdgeVLMError("trainable is empty: name at least one of " + ", ".join(PARTS))
        for key, bounds in _INT_RANGES.items():
            if getattr(self, key) is not None:
                _integer(key, getattr(self, key), *bounds)
        for key, bounds in _FLOAT_RANGES.items():
            _number(key, getattr(self, key), *bounds)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("betas", f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.global_batch_size % self.per_device_batch_size:
            raise EdgeVLMError(
                f"global_batch_size {self.global_batch_size} is not a multiple of per_device_batch_size "
                f"{self.per_device_batch_size}"
            )
        if self.init_from is None and self.model_preset is None:
            raise EdgeVLMError("set init_from (a checkpoint dir) or model_preset (+ tokenizer) to say what to train")
        if self.init_from is not None and self.model_preset is not None:
            raise EdgeVLMError("set either init_from or model_preset, not both")
        if self.model_preset is not None and self.tokenizer is None and self.tokenizer_vocab_size is None:
            raise EdgeVLMError(
                f"model_preset {self.model_preset!r} needs a tokenizer: set tokenizer (a dir with tokenizer.json) or "
                "tokenizer_vocab_size (train one on the data's text)"
            )
        if self.qlora and not self.use_lora:
            raise EdgeVLMError("qlora needs LoRA adapters: set lora_r > 0 (e.g. --lora_r 64)")
        if self.use_lora and self.init_from is None:
            raise EdgeVLMError("LoRA / QLoRA adapt a trained base: set init_from to a checkpoint dir")
        if not self.data_path:
            raise EdgeVLMError("data_path is not set: give the training data file (--data_path FILE)")
        for key in _PATH_KEYS:  # '' would silently mean the current folder
            value = getattr(self, key)
            # output_dir has a default: None here is an empty YAML value (`output_dir:`, --output_dir '')
            if (value is None and key == "output_dir") or (value is not None and not str(value).strip()):
                raise ConfigError(key, f"{key} is an empty path: give a folder or file path")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "config", overridden: set[str] | frozenset = frozenset()
                  ) -> TrainConfig:
        """`source` names where the values come from in errors; a bad key in `overridden` came from the command
        line, and the error says so."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if not isinstance(key, str) or key not in known:
                close = difflib.get_close_matches(key, known, n=1) if isinstance(key, str) else []
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = " (given on the command line)" if key in overridden else ""
                raise EdgeVLMError(f"{source}: unknown key {key!r}{hint}{where}")
        try:
            return cls(**{k: _coerce(k, v) for k, v in data.items()})
        except ConfigError as exc:
            where = " (given on the command line)" if exc.key in overridden else ""
            raise EdgeVLMError(f"{source}: {exc}{where}") from exc
        except (EdgeVLMError, TypeError) as exc:
            raise EdgeVLMError(f"{source}: {exc}") from exc


# ---------------------------------------------------------------------- loading presets
def load_plan(path: str | Path, overrides: list[str] | None = None) -> list[TrainConfig]:
    """The stages of a preset file (one for a flat file), with CLI overrides applied and paths resolved."""
    path = Path(path)
    if not path.exists():
        raise EdgeVLMError(f"config file not found: {path} (presets live in train/configs/)")
    raw = read_yaml_mapping(path, "config file")
    shared = {k: v for k, v in raw.items() if k not in ("stages", *PLAN_STEPS)}
    stage_dicts = raw.get("stages")
    if stage_dicts is None:
        stage_dicts = [{}]
    elif not isinstance(stage_dicts, list) or not stage_dicts or not all(isinstance(s, dict) for s in stage_dicts):
        raise EdgeVLMError(f"{path}: 'stages' must be a non-empty list of mappings")
    plan = len(raw.get("stages") or []) > 0
    names = [s.get("name") or s.get("stage") or f"stage{i}" for i, s in enumerate(stage_dicts)]
    for name in names if plan else []:
        if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name):
            raise EdgeVLMError(f"{path}: stage name {name!r} must be a plain folder name (letters, digits, '_', '-', "
                               "'.'): each stage writes to output_dir/<name>")
    if len(set(names)) != len(names):
        raise EdgeVLMError(f"{path}: stage names must be unique, got {names}")
    every, per_stage = parse_overrides(overrides or [], names)
    configs: list[TrainConfig] = []
    for index, (name, stage_raw) in enumerate(zip(names, stage_dicts)):
        merged = {**shared, **stage_raw, **every, **per_stage.get(name, {})}
        if plan:
            merged["name"] = name
            root = merged.get("output_dir", TrainConfig.output_dir)
            if isinstance(root, bool) or not isinstance(root, (str, int)) or root == "":
                raise EdgeVLMError(f"{path}: output_dir must be a folder path, got {root!r}")
            merged["output_dir"] = str(Path(str(root)) / name)
            own_keys = set(stage_raw) | set(per_stage.get(name, {}))
            if index > 0 and not {"init_from", "model_preset"} & own_keys:
                merged.pop("model_preset", None)
                merged.pop("tokenizer", None)
                merged.pop("tokenizer_vocab_size", None)
                merged["init_from"] = str(Path(configs[-1].output_dir) / "final")
        configs.append(TrainConfig.from_dict(merged, source=f"{path} [{name}]" if plan else str(path),
                                             overridden=set(every) | set(per_stage.get(name, {}))))
    return configs


def plan_steps(path: str | Path) -> dict:
    """A plan file's steps around its stages: `synth` (write the synthetic world first: keyword arguments of
    edge_vlm.train.builtin.ensure_world), `vision_pretrain` (pretrain the from-scratch model's vision tower before the
    first stage: edge_vlm.train.vision_pretrain.VisionPretrainConfig) and `evaluate` ({eval_file, limit}: exact match
    per question type of the last stage's final checkpoint)."""
    raw = read_yaml_mapping(path, "config file")
    steps = {k: raw[k] for k in PLAN_STEPS if raw.get(k) is not None}
    for key, value in steps.items():
        if not isinstance(value, dict):
            raise EdgeVLMError(f"{path}: {key} must be a mapping, got {value!r}")
    evaluate = steps.get("evaluate")
    if evaluate is not None:
        unknown = sorted(set(map(str, evaluate)) - {"eval_file", "limit"})
        if unknown:
            raise EdgeVLMError(f"{path}: unknown evaluate key(s) {unknown}; known: eval_file, limit")
        if not isinstance(evaluate.get("eval_file"), str) or not evaluate["eval_file"]:
            raise EdgeVLMError(f"{path}: evaluate needs eval_file (the world's eval.json)")
        if evaluate.get("limit") is not None:
            try:
                _integer("limit", evaluate["limit"], 1)
            except ConfigError as exc:
                raise EdgeVLMError(f"{path}: evaluate {exc}") from exc
    return steps


def parse_overrides(args: list[str], stage_names: list[str] | None = None) -> tuple[dict, dict[str, dict]]:
    """`--key value` pairs -> (for every stage, {stage name: for that stage}). Values are YAML scalars."""
    every: dict = {}
    per_stage: dict[str, dict] = {}
    index = 0
    while index < len(args):
        token = args[index]
        if not token.startswith("--") or len(token) < 3:
            raise EdgeVLMError(f"expected --key value, got {token!r}")
        key = token[2:].replace("-", "_")
        value: str
        if "=" in key:
            key, value = key.split("=", 1)
            index += 1
        elif index + 1 < len(args) and not args[index + 1].startswith("--"):
            value = args[index + 1]
            index += 2
        else:  # a bare flag means true
            value = "true"
            index += 1
        target = every
        if "." in key:
            stage, key = key.split(".", 1)
            if stage_names is not None and stage not in stage_names:
                raise EdgeVLMError(f"--{stage}.{key}: no stage named {stage!r} (stages: {stage_names})")
            target = per_stage.setdefault(stage, {})
        target[key] = _parse_value(value)
    return every, per_stage


def _parse_value(text: str):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and "," in value:
        return [_parse_value(part) for part in value.split(",")]
    return value


_HINTS = typing.get_type_hints(TrainConfig)


def _scalar_type(key: str):
    """The field's scalar type (bool, int, float, str), or None for lists / tuples."""
    hint = _HINTS.get(key)
    args = [hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if len(args) == 1 else None
    return base if base in (bool, int, float, str) else None


def _coerce(key: str, value):
    """Apply the field's scalar type to a YAML value (PyYAML reads `1e-3` as a string, `2` for a float field as int)."""
    kind = _scalar_type(key)
    if value is None or kind is None:
        return value
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "yes", "1")
            if value not in (True, False, 0, 1):
                raise ValueError(value)
            return bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(value, (list, dict)):
            raise ValueError(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"{key}: {value!r} is not a valid {kind.__name__}") from exc


def _as_list(value, key: str) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(key, f"{key} must be a list, got {value!r}")


def _floats(value, key: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _as_list(value, key))
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"{key} must be a list of numbers, got {value!r}") from exc


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(key, f"{key} {value!r} is not one of {list(allowed)}")


def _integer(key: str, value, low: int, high: int | None = None) -> None:
    """An int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(key, f"{key} must be {allowed}, got {value!r}")


def _number(key: str, value, low: float, high: float | None, low_open: bool, high_open: bool) -> None:
    """A finite number within the bounds (NaN fails every comparison, so it is named on its own)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value) and (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high)):
        return
    if high is None:
        allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ConfigError(key, f"{key} must be {allowed}, got {value!r}")
