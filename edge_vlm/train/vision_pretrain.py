"""Vision-tower pretraining for a model trained from scratch: the stand-in for CLIP's own pretraining.

LLaVA-Phi starts from a pretrained CLIP ViT and a pretrained Phi-2; stage 1 only aligns them. A model built from
scratch has no pretrained vision tower, and its random ViT sees the world's mostly white pictures as nearly the same
picture: the language model then learns the answers' priors long before the picture can matter, and stays image-blind
(the first built-in model did: 26% exact match, loss unchanged when its images were shuffled). So, before stage 1, the
ViT is pretrained on its own, supervised by the scene each picture was drawn from (edge-vlm data synth stores it with
each caption): for each of the world's five slots, what is there (nothing, one of the shapes or a glyph), its colour,
its size and its character. A linear head reads the features the projector will read (hidden_states[-2], CLS
dropped), flattened in patch order, and is thrown away afterwards. (Heads shared by all image tokens were tried too,
and did worse; see train/README.md.)

Run by a plan file's `vision_pretrain:` step (train/configs/builtin.yaml). The loop is plain PyTorch on one process:
it takes ~1-2 minutes on 2 CPU cores for the built-in model, so a distributed engine would add nothing.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from edge_vlm.data.questions import MAX_COUNT
from edge_vlm.data.scene import COLORS, DIGITS, LETTERS, SHAPES, SIZES, SLOTS
from edge_vlm.errors import EdgeVLMError

SLOT_NAMES = tuple(SLOTS)
KINDS = ("nothing", *SHAPES, "glyph")
COLOR_NAMES = ("none", *COLORS)
SIZE_NAMES = ("none", *SIZES)
CHARS = ("none", *LETTERS, *DIGITS)
# (attribute, number of classes) per slot, in the order of the head's logits.
ATTRIBUTES = (("kind", len(KINDS)), ("color", len(COLOR_NAMES)), ("size", len(SIZE_NAMES)), ("char", len(CHARS)))
# The scene summary (option `summary_tokens`): for each colour, the shape of the object in it (or none); for each
# shape, how many there are (0 to MAX_COUNT, the largest count the world's questions ask about).
SHAPE_OR_NONE = ("none", *SHAPES)
SUMMARY = (*((f"shape_of_{color}", len(SHAPE_OR_NONE)) for color in COLORS),
           *((f"count_of_{shape}", MAX_COUNT + 1) for shape in SHAPES))
SUMMARY_TOKENS = ("none", "corners", "all")
SETTINGS_FILE = "vision_pretrain.json"


@dataclass
class VisionPretrainConfig:
    """A plan's `vision_pretrain:` mapping."""

    data_path: str  # the world's pretrain.json (each record carries its `scene`)
    output_dir: str  # the start checkpoint is written to output_dir/final
    steps: int = 500
    lr: float = 1e-3
    batch_size: int = 64
    warmup_steps: int = 25
    weight_decay: float = 0.1
    held_out: int = 500  # pictures kept out of training to report accuracy on
    seed: int = 0
    num_threads: int | None = None
    # Which image tokens must each tell the scene summary (SUMMARY) on their own, through a second linear head shared
    # by them: "none"; "corners", the four corner patches, which no slot of the world ever reaches; or "all".
    # "Is there a red star?" and "how many stars?" then become a read of one token rather than a search of all of
    # them. ViTs store global information in background patches by themselves (Darcet et al. 2024, "Vision
    # Transformers Need Registers"); this asks for it. Measured on the built-in model: counting is learned, but
    # questions about one object (position, colour) are lost, with either choice; not used by the shipped recipe
    # (train/README.md).
    summary_tokens: str = "none"

    @property
    def with_summary(self) -> bool:
        return self.summary_tokens != "none"

    @classmethod
    def from_dict(cls, data: dict, source: str) -> VisionPretrainConfig:
        from edge_vlm.train.config import ConfigError, _integer, _number

        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise EdgeVLMError(f"{source}: unknown vision_pretrain key(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("data_path", "output_dir") if k not in data]
        if missing:
            raise EdgeVLMError(f"{source}: vision_pretrain needs {missing}")
        config = cls(**data)
        try:
            for key in ("data_path", "output_dir"):
                if not isinstance(getattr(config, key), str) or not getattr(config, key):
                    raise ConfigError(key, f"{key} must be a path, got {getattr(config, key)!r}")
            if config.summary_tokens not in SUMMARY_TOKENS:
                raise ConfigError("summary_tokens", f"summary_tokens must be one of {SUMMARY_TOKENS}, "
                                                    f"got {config.summary_tokens!r}")
            for key in ("steps", "batch_size"):
                _integer(key, getattr(config, key), 1)
            for key in ("warmup_steps", "held_out"):
                _integer(key, getattr(config, key), 0)
            _integer("seed", config.seed, 0, 2**32 - 1)
            if config.num_threads is not None:
                _integer("num_threads", config.num_threads, 1)
            config.lr = _as_float(config.lr)
            config.weight_decay = _as_float(config.weight_decay)
            _number("lr", config.lr, 0, None, True, False)
            _number("weight_decay", config.weight_decay, 0, None, False, False)
        except ConfigError as exc:
            raise EdgeVLMError(f"{source}: vision_pretrain {exc}") from exc
        return config


def _as_float(value):
    """YAML reads `1e-3` (no dot) as a string: accept a number written so; anything else is left for the check."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def scene_targets(scene: dict) -> list[int]:
    """Class indices for the 5 slots x 4 attributes of a scene dict (edge_vlm.data.scene.Scene.to_dict()), laid out
    attribute-major: [kind of each slot, colour of each slot, size of each slot, char of each slot]."""
    kind = [0] * len(SLOT_NAMES)
    color = [0] * len(SLOT_NAMES)
    size = [0] * len(SLOT_NAMES)
    char = [0] * len(SLOT_NAMES)
    for item in scene.get("shapes", []):
        slot = SLOT_NAMES.index(item["slot"])
        kind[slot] = KINDS.index(item["shape"])
        color[slot] = COLOR_NAMES.index(item["color"])
        size[slot] = SIZE_NAMES.index(item["size"])
    glyph = scene.get("glyph")
    if glyph:
        slot = SLOT_NAMES.index(glyph["slot"])
        kind[slot] = KINDS.index("glyph")
        char[slot] = CHARS.index(glyph["char"])
    return kind + color + size + char


def summary_targets(scene: dict) -> list[int]:
    """Class indices of the scene summary (SUMMARY's order): the shape in each colour, then the count of each shape."""
    shape_of = dict.fromkeys(COLORS, "none")
    counts = dict.fromkeys(SHAPES, 0)
    for item in scene.get("shapes", []):
        shape_of[item["color"]] = item["shape"]
        counts[item["shape"]] += 1
    return ([SHAPE_OR_NONE.index(shape_of[color]) for color in COLORS]
            + [min(counts[shape], MAX_COUNT) for shape in SHAPES])


def _labelled_pictures(data_path: Path, with_summary: bool = False) -> list[tuple[str, list[int]]]:
    from edge_vlm.data.formats import read_llava_json

    pictures: dict[str, list[int]] = {}
    for sample in read_llava_json(data_path):
        scene = sample.extra.get("scene")
        if sample.image is None or scene is None:
            raise EdgeVLMError(f"{data_path}: record {sample.id} has no `scene`; vision pretraining needs a world "
                               "written by this version of `edge-vlm data synth` (remove the world and run again)")
        try:
            pictures[sample.image] = scene_targets(scene) + (summary_targets(scene) if with_summary else [])
        except (KeyError, ValueError) as exc:
            raise EdgeVLMError(f"{data_path}: record {sample.id} has a scene this world does not know: {exc}") from exc
    return sorted(pictures.items())


def _loss_and_accuracy(logits, targets):
    """Cross-entropy summed over the 4 attributes (each averaged over the 5 slots), and per attribute the share of
    pictures with all 5 slots right."""
    import torch.nn.functional as F

    loss = 0.0
    accuracy = {}
    slots = len(SLOT_NAMES)
    per_slot = logits.view(logits.shape[0], slots, -1)
    start = 0
    for index, (name, classes) in enumerate(ATTRIBUTES):
        part = per_slot[:, :, start:start + classes]
        wanted = targets[:, index * slots:(index + 1) * slots]
        loss = loss + F.cross_entropy(part.reshape(-1, classes), wanted.reshape(-1))
        accuracy[name] = (part.argmax(-1) == wanted).all(1).float().mean().item()
        start += classes
    return loss, accuracy


def summary_token_indices(which: str, num_image_tokens: int) -> list[int]:
    """Indices, in patch order, of the image tokens that carry the scene summary."""
    side = round(num_image_tokens ** 0.5)
    if which == "all":
        return list(range(num_image_tokens))
    if side * side != num_image_tokens or side < 3:
        raise EdgeVLMError(f"summary_tokens 'corners' needs a square grid of at least 3 x 3 patches, not "
                           f"{num_image_tokens} tokens")
    return [0, side - 1, side * (side - 1), side * side - 1]


def _summary_loss_and_accuracy(token_logits, targets):
    """token_logits [B, N, sum of SUMMARY's classes], one prediction per image token; targets [B, len(SUMMARY)].
    Cross-entropy averaged over tokens and the summary's entries (x2: the two families, colours and counts, weigh as
    much as two slot attributes), and the share of (picture, token) pairs with the whole summary right."""
    import torch.nn.functional as F

    loss = 0.0
    right = None
    start = 0
    for index, (_, classes) in enumerate(SUMMARY):
        part = token_logits[:, :, start:start + classes]
        wanted = targets[:, index:index + 1].expand(-1, part.shape[1])
        loss = loss + F.cross_entropy(part.reshape(-1, classes), wanted.reshape(-1))
        hit = part.argmax(-1) == wanted
        right = hit if right is None else right & hit
        start += classes
    return loss * 2 / len(SUMMARY), right.float().mean().item()


def pretrain_vision(model, pictures: list[tuple[str, list[int]]], image_root: Path, image_config,
                    config: VisionPretrainConfig, out: Path, log=print) -> dict:
    """Train `model`'s vision tower in place on (image path, targets) pairs; returns the held-out accuracy."""
    import torch
    from tqdm.auto import tqdm

    from edge_vlm.imaging import preprocess
    from edge_vlm.train.records import MetricsLog

    rng = random.Random(config.seed)
    order = list(range(len(pictures)))
    rng.shuffle(order)
    held = [pictures[i] for i in order[:config.held_out]]
    train = [pictures[i] for i in order[config.held_out:]]
    if len(train) < config.batch_size:
        raise EdgeVLMError(f"vision_pretrain: {len(train)} training pictures, fewer than one batch ({config.batch_size})")

    def load(items):
        pixels = torch.stack([torch.from_numpy(preprocess(image_root / path, image_config)) for path, _ in items])
        return pixels, torch.tensor([targets for _, targets in items])

    vision = model.model.vision_tower
    torch.manual_seed(config.seed)
    head = torch.nn.Linear(vision.config.hidden_size * model.num_image_tokens,
                           len(SLOT_NAMES) * sum(n for _, n in ATTRIBUTES))
    params = [*vision.parameters(), *head.parameters()]
    if config.with_summary:  # created after `head`, so runs without it keep their exact random stream
        summary_head = torch.nn.Linear(vision.config.hidden_size, sum(n for _, n in SUMMARY))
        params += summary_head.parameters()
        summary_at = summary_token_indices(config.summary_tokens, model.num_image_tokens)
    n_slot_targets = len(SLOT_NAMES) * len(ATTRIBUTES)

    def losses(pixels, targets):
        features = model.vision_features(pixels)
        loss, accuracy = _loss_and_accuracy(head(features.flatten(1)), targets[:, :n_slot_targets])
        if config.with_summary:
            extra, accuracy["summary"] = _summary_loss_and_accuracy(summary_head(features[:, summary_at]),
                                                                   targets[:, n_slot_targets:])
            loss = loss + extra
        return loss, accuracy
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.98), eps=1e-7,
                                  weight_decay=config.weight_decay)
    # linear warm-up then cosine decay to 0 over the run, as the stages' `cosine` schedule
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _cosine(step, config.steps,
                                                                                 config.warmup_steps))
    metrics = MetricsLog(out, resume_step=None)
    vision.train()
    started = time.perf_counter()
    position = len(train)
    bar = tqdm(range(1, config.steps + 1), desc="vision pretrain", dynamic_ncols=True)
    for step in bar:
        if position + config.batch_size > len(train):  # a new epoch, reshuffled
            rng.shuffle(train)
            position = 0
        pixels, targets = load(train[position:position + config.batch_size])
        position += config.batch_size
        loss, accuracy = losses(pixels, targets)
        if not math.isfinite(loss.item()):  # diverged: stop before the NaN reaches the weights or a checkpoint
            metrics.log({"step": step, "event": "diverged", "loss": loss.item()})
            metrics.close()
            bar.close()
            raise EdgeVLMError(f"vision_pretrain diverged at step {step} (loss {loss.item()}): nothing was saved; "
                               f"lower its lr ({config.lr:g}) and run again")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0],
                  "seconds": round(time.perf_counter() - started, 2), **{f"acc_{k}": v for k, v in accuracy.items()}}
        metrics.log(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}")
    bar.close()
    metrics.close()
    vision.eval()
    result: dict = {"steps": config.steps, "seconds": round(time.perf_counter() - started, 1),
                    "held_out_pictures": len(held)}
    if held:
        with torch.no_grad():
            right = {name: 0.0 for name, _ in ATTRIBUTES}
            if config.with_summary:
                right["summary"] = 0.0
            for start in range(0, len(held), 100):
                pixels, targets = load(held[start:start + 100])
                _, accuracy = losses(pixels, targets)
                for name in right:
                    right[name] += accuracy[name] * pixels.shape[0]
        result["held_out_accuracy"] = {name: round(value / len(held), 4) for name, value in right.items()}
        log("vision pretrain: held-out pictures with all 5 slots right"
            + (" (summary: image tokens with all of it right)" if config.with_summary else "") + ": "
            + ", ".join(f"{k} {v:.1%}" for k, v in result["held_out_accuracy"].items()))
    return result


def _cosine(step: int, total: int, warmup: int) -> float:
    import math

    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def run_vision_pretrain(options: dict, start_config, source: str, log=print) -> Path:
    """The plan step: build the plan's starting model (preset + tokenizer, as the first stage would), pretrain its
    vision tower, and write it as a checkpoint to output_dir/final, which the first stage then starts from.

    Skipped when output_dir/final exists from the same settings (a resumed plan); refused when it exists from others."""
    from edge_vlm.fileio import atomic_write
    from edge_vlm.imaging import ImageConfig
    from edge_vlm.model.checkpoint import save_checkpoint
    from edge_vlm.train.modelsetup import load_start, resolve_preset

    config = VisionPretrainConfig.from_dict(dict(options), source)
    out = Path(config.output_dir)
    final = out / "final"
    # The preset's shapes too, not only its name: the written start checkpoint holds the whole model, so a preset
    # edited since must not be reused.
    preset = resolve_preset(start_config.model_preset) if start_config.model_preset else None
    settings = {"vision_pretrain": dict(options), "model_preset": start_config.model_preset, "preset_shapes": preset,
                "tokenizer_vocab_size": start_config.tokenizer_vocab_size, "seed": start_config.seed}
    settings_file = out / SETTINGS_FILE
    if final.is_dir():
        try:
            saved = json.loads(settings_file.read_text(encoding="utf-8")).get("settings")
        except (OSError, ValueError, AttributeError):  # missing or damaged: not known to be the same settings
            saved = None
        if saved != json.loads(json.dumps(settings)):
            raise EdgeVLMError(f"{final} was written with other vision_pretrain settings; remove {out} to redo it")
        log(f"[vision_pretrain] done earlier: {final}")
        return final
    data_path = Path(config.data_path)
    if not data_path.is_file():
        raise EdgeVLMError(f"vision_pretrain data_path not found: {data_path}")
    if config.num_threads:
        import torch

        torch.set_num_threads(config.num_threads)
    pictures = _labelled_pictures(data_path, with_summary=config.with_summary)
    model, tokenizer, meta = load_start(start_config, log=log)
    image_config = ImageConfig(image_size=model.config.vision_config.image_size, aspect="square")
    result = pretrain_vision(model, pictures, data_path.parent, image_config, config, out, log=log)
    bad = next((name for name, p in model.named_parameters() if not bool(p.detach().isfinite().all())), None)
    if bad is not None:  # the last update can break the weights although its loss was finite
        raise EdgeVLMError(f"vision_pretrain diverged: {bad} is not finite after step {config.steps}; nothing was "
                           f"saved; lower its lr ({config.lr:g}) and run again")
    meta.source = (meta.source + "; " if meta.source else "") + "vision tower pretrained on the world's scenes"
    save_checkpoint(model, tokenizer, final, meta)
    atomic_write(settings_file, json.dumps({"settings": settings, "result": result}, indent=2) + "\n",
                 "vision_pretrain settings")
    log(f"[vision_pretrain] {config.steps} steps in {result['seconds']:.0f} s -> {final}")
    return final
