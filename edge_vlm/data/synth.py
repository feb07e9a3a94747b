"""The synthetic world, written to disk in the real training formats: `edge-vlm data synth --out DIR`.

Files (all read back by edge_vlm.data.formats, so the real loaders are exercised):
- images/train-NNNNNN.png, images/eval-NNNNNN.png
- pretrain.json: stage-1 captions, LLaVA-Pretrain style (a short instruction with `<image>`, then the caption);
- finetune.json: stage-2 multi-turn conversations over the question types, plus text-only conversations;
  each record has "question_types" (one per turn);
- sft.json: ShareGPT text-only conversations with "question_types";
- eval.json: held-out, one question per record, {"id", "image", "conversations", "question_type", "answer"},
  pictures drawn from another seed stream and never pixel-identical to a training picture;
- world.json: the manifest (seed, command, counts per split and question type, image size, font, vocabulary).

Deterministic for a seed: every random choice comes from `random.Random` streams seeded with strings
(seed, split, index), so the n-th picture of a split does not depend on how many are asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from edge_vlm.data import MAX_SAMPLES
from edge_vlm.data.questions import (
    CAPTION_INSTRUCTIONS,
    MC_BASES,
    QUESTION_TYPES,
    TEXT_ONLY_TYPES,
    ask,
    ask_text_only,
    caption,
    supports,
)
from edge_vlm.data.scene import (
    COLORS,
    DIGITS,
    LETTERS,
    SHAPES,
    SIZES,
    SLOTS,
    MovingScene,
    Scene,
    WorldSpec,
    draw_scene,
    font_name,
    moving_scene_frame,
    sample_scene,
)
from edge_vlm.engine import MAX_SEED
from edge_vlm.errors import EdgeVLMError
from edge_vlm.fileio import atomic_dir, is_empty_dir, json_object, owning
from edge_vlm.prompting import IMAGE_PLACEHOLDER

__all__ = ["MovingScene", "moving_scene_frame", "write_world", "GENERATOR_VERSION"]

GENERATOR_VERSION = 2  # bump when the same seed would give other files
PNG_COMPRESS_LEVEL = 1  # fast: a level-9 PNG is ~10% smaller and several times slower to write
TURN_WEIGHTS = {3: 0.1, 4: 0.2, 5: 0.3, 6: 0.25, 7: 0.15}  # questions per stage-2 conversation (at most one per type)
IMAGE_TAG_LAST = 0.2  # share of first questions with `<image>` after the text, as in part of LLaVA-665K
# With extra_questions, how many more times the question types are gone through: a picture that supports few
# questions cannot fill every extra turn without repeating one, and then its conversation ends shorter.
MAX_EXTRA_ROUNDS = 2
# Picture sides accepted by write_world / `--image-size`, checked before anything is drawn. Below 32 px the glyphs
# and small shapes are unreadable; above 4096 px one picture is 48 MB in memory and a world of them is not a
# training set anyone can use (the model's vision tower sees 336 px).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 4096


def _rng(seed: int, *names) -> random.Random:
    # String seeds go through SHA-512 in CPython: stable across runs, platforms and Python versions.
    return random.Random("/".join([str(seed), *map(str, names)]))


def _human(text: str) -> dict:
    return {"from": "human", "value": text}


def _gpt(text: str) -> dict:
    return {"from": "gpt", "value": text}


def _with_image(question: str, rng: random.Random) -> str:
    if rng.random() < IMAGE_TAG_LAST:
        return f"{question}\n{IMAGE_PLACEHOLDER}"
    return f"{IMAGE_PLACEHOLDER}\n{question}"


class _Balancer:
    """Keeps question types near-equal in number and exist answers exactly alternating yes / no."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.exist_asked = 0

    def pick(self, rng: random.Random, scene: Scene, taken: set[str]) -> str | None:
        types = [t for t in QUESTION_TYPES if t not in taken and supports(scene, t)]
        if not types:
            return None
        # Squared inverse counts: a type that only some pictures support (text) catches up with the others.
        return rng.choices(types, weights=[1.0 / (1 + self.counts[t]) ** 2 for t in types])[0]

    def options(self, question_type: str) -> dict:
        if question_type != "exist":
            return {}
        self.exist_asked += 1
        return {"answer_yes": self.exist_asked % 2 == 1}


def _conversation(scene: Scene, rng: random.Random, balancer: _Balancer,
                  extra_questions: int = 0) -> tuple[list[dict], list[str]]:
    """A multi-turn stage-2 conversation about one picture (no question asked twice).

    `extra_questions` lengthens it beyond the 3-7 questions: once every type has been asked, the types are asked
    again about other objects. More questions share one picture and one system prompt, so a training step
    supervises more answers for the same number of tokens."""
    n_turns = rng.choices(list(TURN_WEIGHTS), weights=list(TURN_WEIGHTS.values()))[0] + extra_questions
    messages: list[dict] = []
    types: list[str] = []
    taken: set[str] = set()
    asked: set[str] = set()
    rounds = 0
    while len(types) < n_turns:
        question_type = balancer.pick(rng, scene, taken)
        if question_type is None:
            if not extra_questions or rounds == MAX_EXTRA_ROUNDS:
                break
            taken, rounds = set(), rounds + 1
            continue
        taken.add(question_type)
        made = ask(scene, rng, question_type, **balancer.options(question_type))
        if made is None or made[0] in asked:  # a later round never repeats a question
            continue
        balancer.counts[question_type] += 1
        question, answer = made
        messages += [_human(_with_image(question, rng) if not messages else question), _gpt(answer)]
        types.append(question_type)
        asked.add(question)
    return messages, types


def _text_conversation(rng: random.Random, counts: Counter) -> tuple[list[dict], list[str]]:
    n_turns = rng.choice((1, 1, 2, 3))
    messages, types = [], []
    for _ in range(n_turns):
        question_type = rng.choice(TEXT_ONLY_TYPES)
        question, answer = ask_text_only(rng, question_type)
        messages += [_human(question), _gpt(answer)]
        types.append(question_type)
        counts[question_type] += 1
    return messages, types


def _save_png(image, path: Path) -> None:
    image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _eval_scene(rng: random.Random, spec: WorldSpec, needs: list[str], target_count: int | None,
                seen: set[bytes], image_size: int):
    """Draw scenes until one supports the question kinds in `needs` (and the wanted count) and is not a
    training picture."""
    for _ in range(10_000):
        scene = sample_scene(rng, spec)
        if not all(supports(scene, kind) for kind in needs):
            continue
        if target_count is not None and target_count > 0 and all(scene.count(s) != target_count for s in SHAPES):
            continue
        if target_count == 0 and all(scene.count(s) > 0 for s in SHAPES):
            continue
        image = draw_scene(scene, image_size)
        if hashlib.sha1(image.tobytes()).digest() in seen:
            continue
        return scene, image
    raise RuntimeError(f"no scene for a {needs} question after 10000 tries")  # cannot happen with the defaults


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EdgeVLMError(f"--out {out} is a file; give the path of a directory to create")
    if out.is_dir() and any(out.iterdir()) and not force:
        if is_world(out):
            raise EdgeVLMError(f"--out {out} already holds a synthetic world (not empty): pass --force to replace it")
        raise EdgeVLMError(f"--out {out} is not empty and is not an earlier synthetic world: choose a new directory "
                           "(--force replaces only an earlier world)")


def _check_counts(seed: int, counts: dict[str, int]) -> None:
    """Every count (by its flag) from 0 (--train from 1) to MAX_SAMPLES and the seed from 0 to MAX_SEED, before
    anything is drawn: a typo must not start hours of drawing that end with a full disk."""
    if not 0 <= seed <= MAX_SEED:
        raise EdgeVLMError(f"--seed must be 0 to {MAX_SEED} (2**32-1), got {seed}")
    for flag, value in counts.items():
        least = 1 if flag == "--train" else 0
        if not least <= value <= MAX_SAMPLES:
            raise EdgeVLMError(f"{flag} must be {least} to {MAX_SAMPLES:,}, got {value}")


def _check_out_path(out: str | Path) -> Path:
    """--out must name a new folder (or one to replace): '' would mean the current folder, and the world is written
    beside --out and renamed into its place, which cannot work for the current folder or a folder above it."""
    if not str(out).strip():
        raise EdgeVLMError("--out is empty: give the path of a directory to create, e.g. --out world")
    path = Path(out)
    try:
        here, there = Path.cwd().resolve(), path.resolve()
    except (OSError, RuntimeError) as exc:  # the current folder was removed; a symlink loop
        raise EdgeVLMError(f"cannot use --out {out}: {getattr(exc, 'strerror', None) or exc}") from exc
    if there == here or there in here.parents:
        raise EdgeVLMError(f"--out {out} is the current folder or a folder above it: give the path of a new "
                           "directory to create, e.g. --out world")
    if path.name == "..":  # the folder would be created under another name than the one given
        raise EdgeVLMError(f"--out {out} ends in '..': give the path of the directory to create itself")
    return path


def shell_command(argv: list[str]) -> str:
    """`argv` as one line a shell runs again (world.json's "command"). An argument that is not UTF-8 (a Linux path is
    bytes; Python keeps the other bytes as surrogates, which no UTF-8 file can hold) is written as bash's $'\\xNN'."""
    return " ".join(_shell_word(word) for word in argv)


def _shell_word(word: str) -> str:
    raw = os.fsencode(word)
    try:
        return shlex.quote(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "$'" + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b"'\\" else f"\\x{b:02x}" for b in raw) + "'"


# What write_world puts in a world folder; `--force` replaces an earlier world only when it holds nothing else.
WORLD_FILES = ("world.json", "pretrain.json", "finetune.json", "sft.json", "eval.json", "images/train-*.png",
               "images/eval-*.png")


@owning(WORLD_FILES)
def is_world(path: Path) -> bool:
    """Whether `path` holds a world this generator wrote (its world.json manifest): only such a folder (or an empty
    one) may be replaced with --force, and only when it holds no file but WORLD_FILES."""
    try:
        manifest = json_object(path / "world.json")  # None for a FIFO or device named so: never blocks on one
    except OSError:
        return False
    return manifest is not None and "generator_version" in manifest and "counts" in manifest


def write_world(out: str | Path, seed: int = 0, train: int = 10_000, eval_size: int = 1_400,
                sft: int | None = None, text_only: int | None = None, image_size: int = 112,
                spec: WorldSpec | None = None, extra_questions: int = 0, caption_counts: bool = False,
                force: bool = False, progress: bool = True,
                command: str | None = None) -> dict:
    """Write the synthetic world to `out` (atomically) and return its manifest.

    `train` pictures give one caption each (pretrain.json) and one conversation of 3-7 questions each (finetune.json);
    `text_only` text conversations (default train // 10) are added to finetune.json; `sft` ShareGPT conversations
    (default train // 5) go to sft.json; `eval_size` held-out single questions, cycling through the question types.
    `extra_questions`: questions added to every stage-2 conversation (see _conversation);
    `caption_counts`: stage-1 captions end with the count of every shape (questions.caption).
    """
    if extra_questions < 0:
        raise EdgeVLMError(f"extra_questions must be >= 0, got {extra_questions}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise EdgeVLMError(f"--image-size must be {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, got {image_size}")
    sft = train // 5 if sft is None else sft
    text_only = train // 10 if text_only is None else text_only
    _check_counts(seed, {"--train": train, "--eval": eval_size, "--sft": sft, "--text-only": text_only})
    spec = spec or WorldSpec()
    out = _check_out_path(out)
    _check_out(out, force)
    # Written into a temp folder beside `out` that takes its place only when complete: an error or Ctrl-C leaves
    # nothing behind, and --force replaces only an earlier world or an empty folder, never a user's folder.
    with atomic_dir(out, force=force or is_empty_dir(out), replaceable=is_world, what="synthetic world") as tmp:
        manifest = _write(tmp, seed, train, eval_size, sft, text_only, image_size, spec,
                          extra_questions, caption_counts, progress)
        manifest["command"] = command or (f"edge-vlm data synth --out {_shell_word(str(out))} --seed {seed} "
                                          f"--train {train} --eval {eval_size} --sft {sft} --text-only {text_only} "
                                          f"--image-size {image_size}"
                                          + (f" --extra-questions {extra_questions}" if extra_questions else "")
                                          + (" --caption-counts" if caption_counts else ""))
        _dump(tmp / "world.json", manifest, indent=2)
    return manifest


def _dump(path: Path, data, indent: int | None = None) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=indent, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write(root: Path, seed: int, train: int, eval_size: int, sft: int, text_only: int, image_size: int,
           spec: WorldSpec, extra_questions: int, caption_counts: bool, progress: bool) -> dict:
    images = root / "images"
    images.mkdir()
    pretrain_records, finetune_records = [], []
    balancer = _Balancer()
    seen_pixels: set[bytes] = set()
    seen_layouts: set = set()
    for index in tqdm(range(1, train + 1), desc="train pictures", unit="img", disable=not progress):
        rng = _rng(seed, "train", index)
        scene = sample_scene(rng, spec)
        image = draw_scene(scene, image_size)
        seen_pixels.add(hashlib.sha1(image.tobytes()).digest())
        seen_layouts.add(scene.layout_key())
        name = f"images/train-{index:06d}.png"
        _save_png(image, root / name)
        instruction = rng.choice(CAPTION_INSTRUCTIONS)
        pretrain_records.append({"id": f"cap-{index:06d}", "image": name,
                                 "conversations": [_human(_with_image(instruction, rng)), _gpt(caption(scene, caption_counts))],
                                 "scene": scene.to_dict()})  # what was drawn: labels for vision pretraining
        messages, types = _conversation(scene, rng, balancer, extra_questions)
        finetune_records.append({"id": f"conv-{index:06d}", "image": name, "conversations": messages,
                                 "question_types": types})
    text_counts: Counter = Counter()
    for index in range(1, text_only + 1):
        messages, types = _text_conversation(_rng(seed, "text-only", index), text_counts)
        finetune_records.append({"id": f"text-{index:06d}", "conversations": messages, "question_types": types})
    # Mix the text-only conversations in, as LLaVA-665K does; shuffled with its own stream.
    _rng(seed, "finetune-order").shuffle(finetune_records)
    sft_counts: Counter = Counter()
    sft_records = []
    for index in range(1, sft + 1):
        messages, types = _text_conversation(_rng(seed, "sft", index), sft_counts)
        sft_records.append({"id": f"sft-{index:06d}", "conversations": messages, "question_types": types})

    eval_records, eval_counts, exist_answers, overlap = [], Counter(), Counter(), 0
    count_targets = Counter()
    for index in tqdm(range(1, eval_size + 1), desc="eval pictures", unit="img", disable=not progress):
        rng = _rng(seed, "eval", index)
        question_type = QUESTION_TYPES[(index - 1) % len(QUESTION_TYPES)]
        nth = (index - 1) // len(QUESTION_TYPES)  # how many of this type came before
        options: dict = {}
        target = None
        if question_type == "exist":
            options = {"answer_yes": nth % 2 == 0}
        elif question_type == "count":
            target = nth % min(4, spec.max_shapes + 1)  # answers 0, 1, 2, 3 equally often
            options = {"target": target}
        elif question_type == "mc":
            options = {"base": MC_BASES[nth % len(MC_BASES)]}
        needs = [question_type] + (["color"] if options.get("base") == "color" else [])
        scene, image = _eval_scene(rng, spec, needs, target, seen_pixels, image_size)
        question, answer = ask(scene, rng, question_type, **options)
        overlap += scene.layout_key() in seen_layouts
        name = f"images/eval-{index:06d}.png"
        _save_png(image, root / name)
        eval_records.append({"id": f"eval-{index:06d}", "image": name,
                             "conversations": [_human(f"{IMAGE_PLACEHOLDER}\n{question}"), _gpt(answer)],
                             "question_type": question_type, "answer": answer})
        eval_counts[question_type] += 1
        if question_type == "exist":
            exist_answers[answer] += 1
        if question_type == "count":
            count_targets[answer] += 1

    _dump(root / "pretrain.json", pretrain_records)
    _dump(root / "finetune.json", finetune_records)
    _dump(root / "sft.json", sft_records)
    _dump(root / "eval.json", eval_records)
    finetune_exist = Counter(m["value"] for r in finetune_records for m, t in
                             zip(r["conversations"][1::2], r["question_types"]) if t == "exist")
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "extra_questions": extra_questions,
        "caption_counts": caption_counts,
        "font": font_name(),
        "counts": {
            "train_images": train, "eval_images": eval_size,
            "pretrain": len(pretrain_records), "finetune": len(finetune_records),
            "finetune_text_only": text_only, "sft": len(sft_records), "eval": len(eval_records),
        },
        "question_types": {
            "finetune": dict(sorted(balancer.counts.items())),
            "finetune_text_only": dict(sorted(text_counts.items())),
            "sft": dict(sorted(sft_counts.items())),
            "eval": dict(sorted(eval_counts.items())),
        },
        "exist_answers": {"finetune": dict(sorted(finetune_exist.items())), "eval": dict(sorted(exist_answers.items()))},
        "eval_count_answers": dict(sorted(count_targets.items())),
        "eval_layouts_seen_in_train": overlap,
        "eval_pictures_identical_to_train": 0,  # guaranteed: such pictures are redrawn
        "vocabulary": {"colors": list(COLORS), "shapes": list(SHAPES), "sizes": list(SIZES),
                       "positions": list(SLOTS), "letters": list(LETTERS), "digits": list(DIGITS)},
        "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(spec).items()},
    }
