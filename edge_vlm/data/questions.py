"""Questions, answers and captions about synthetic scenes, and the text-only questions of the SFT set.

Every question is asked only when its answer is unambiguous in the scene (colours are distinct within a scene, so
"the red object" is one object; "what color is the star" needs exactly one star). Answers are one or two words.
The prompt suffixes are the paper's evaluation suffixes (docs/evaluation.md), byte for byte.
"""

from __future__ import annotations

import random
import string

from edge_vlm.data.scene import COLORS, SHAPES, SIZES, SLOT_PHRASES, SLOTS, Scene, plural

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
MULTIPLE_CHOICE_SUFFIX = "\nAnswer with the option's letter from the given choices directly."

QUESTION_TYPES = ("exist", "count", "color", "shape", "position", "mc", "text")
MC_BASES = ("color", "shape", "position", "count", "size")
MAX_COUNT = 4
_COUNT_WEIGHTS = (1, 1, 2, 4, 4)  # for answers 0-4


# ---------------------------------------------------------------- the short-answer kinds

def ask_exist(scene: Scene, rng: random.Random, answer_yes: bool) -> tuple[str, str]:
    """POPE-style: "Is there a {color} {shape} in the image?". Half of the "no" questions are hard negatives
    (a colour or a shape that is in the picture, in another combination)."""
    if answer_yes:
        target = rng.choice(scene.shapes)
        color, shape = target.color, target.shape
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if not scene.has(c, s)]
        present_colors = {s.color for s in scene.shapes}
        present_shapes = {s.shape for s in scene.shapes}
        hard = [(c, s) for c, s in absent if c in present_colors or s in present_shapes]
        color, shape = rng.choice(hard if hard and rng.random() < 0.5 else absent)
    return f"Is there a {color} {shape} in the image?", "yes" if answer_yes else "no"


def count_choices(scene: Scene) -> dict[str, int]:
    return {shape: scene.count(shape) for shape in SHAPES}


def ask_count(scene: Scene, rng: random.Random, target: int | None = None) -> tuple[str, str] | None:
    """"How many {shape}s are there?" -> a digit. With `target`, only a shape with that count is asked about;
    without, the answer is drawn first among the counts the picture offers (zero included), higher counts
    favoured because pictures offer them rarely (the eval split asks 0-3 equally often)."""
    counts = count_choices(scene)
    if target is None:
        offered = sorted(set(counts.values()))
        target = rng.choices(offered, weights=[_COUNT_WEIGHTS[n] for n in offered])[0]
    options = [s for s, n in counts.items() if n == target]
    if not options:
        return None
    shape = rng.choice(options)
    return f"How many {plural(shape)} are there?", str(target)


def ask_color(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """"What color is the {shape}?" — only about a shape that appears exactly once."""
    unique = [s for s in scene.shapes if scene.count(s.shape) == 1]
    if not unique:
        return None
    target = rng.choice(unique)
    return f"What color is the {target.shape}?", target.color


def ask_shape(scene: Scene, rng: random.Random) -> tuple[str, str]:
    target = rng.choice(scene.shapes)
    return f"What shape is the {target.color} object?", target.shape


def ask_position(scene: Scene, rng: random.Random) -> tuple[str, str]:
    target = rng.choice(scene.shapes)
    return f"Where is the {target.color} {target.shape}?", target.slot


def ask_text(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    if scene.glyph is None:
        return None
    kind = "number" if scene.glyph.is_digit else "letter"
    return f"What {kind} is written in the image?", scene.glyph.char


# ---------------------------------------------------------------- ScienceQA-style multiple choice

def _mc_base(scene: Scene, rng: random.Random, base: str) -> tuple[str, str, list[str]] | None:
    """(question, correct option, other possible options) for one kind of multiple-choice question."""
    if base == "color":
        asked = ask_color(scene, rng)
        return (*asked, [c for c in COLORS if c != asked[1]]) if asked else None
    target = rng.choice(scene.shapes)
    if base == "shape":
        return f"What shape is the {target.color} object?", target.shape, [s for s in SHAPES if s != target.shape]
    if base == "position":
        return f"Where is the {target.color} {target.shape}?", target.slot, [s for s in SLOTS if s != target.slot]
    if base == "size":
        return (f"What size is the {target.color} {target.shape}?", target.size,
                [s for s in SIZES if s != target.size])
    question, answer = ask_count(scene, rng)
    return question, answer, [str(n) for n in range(MAX_COUNT + 1) if str(n) != answer]


def ask_mc(scene: Scene, rng: random.Random, base: str | None = None) -> tuple[str, str] | None:
    """A multiple-choice question with 2-4 options `\\nA. ...`, answered by the correct option's letter."""
    made = _mc_base(scene, rng, base or rng.choice(MC_BASES))
    if made is None:
        return None
    question, correct, others = made
    n_options = min(len(others) + 1, rng.choice((3, 4)))
    options = [correct, *rng.sample(others, n_options - 1)]
    rng.shuffle(options)
    lines = "".join(f"\n{letter}. {option}" for letter, option in zip(string.ascii_uppercase, options))
    return f"{question}{lines}{MULTIPLE_CHOICE_SUFFIX}", string.ascii_uppercase[options.index(correct)]


def ask(scene: Scene, rng: random.Random, question_type: str, **options) -> tuple[str, str] | None:
    """A (prompt, answer) pair of `question_type` with its suffix, or None when the scene cannot support it."""
    makers = {"exist": ask_exist, "count": ask_count, "color": ask_color, "shape": ask_shape,
              "position": ask_position, "mc": ask_mc, "text": ask_text}
    made = makers[question_type](scene, rng, **options)
    if made is None:
        return None
    question, answer = made
    return (question if question_type == "mc" else question + SHORT_ANSWER_SUFFIX), answer


def supports(scene: Scene, question_type: str) -> bool:
    if question_type == "color":
        return any(scene.count(s.shape) == 1 for s in scene.shapes)
    if question_type == "text":
        return scene.glyph is not None
    return True


# ---------------------------------------------------------------- stage-1 captions

# Short instructions in the style of LLaVA-Pretrain's human turns (the `plain` template drops them).
CAPTION_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Give a brief description of the image.",
    "Provide a brief description of the given image.",
    "Write a terse but informative summary of the picture.",
    "Summarize the visual content of the image.",
)


def caption(scene: Scene, counts: bool = False) -> str:
    """One sentence naming every item in reading order (top, left, center, right, bottom); with `counts`, then the
    count of every shape, zeros included: "A small red star at the top and the letter A in the center. Circles: 0,
    squares: 0, triangles: 0, stars: 1, crosses: 0."

    Why the counts: stage 1 supervises every caption token, stage 2 only the one-word answers (~5% of its tokens), so
    a skill taught by the captions is learned several times faster (train/README.md has the runs)."""
    parts = []
    for slot in ("top", "left", "center", "right", "bottom"):
        for s in scene.shapes:
            if s.slot == slot:
                parts.append(f"a {s.size} {s.color} {s.shape} {SLOT_PHRASES[slot]}")
        if scene.glyph is not None and scene.glyph.slot == slot:
            kind = "number" if scene.glyph.is_digit else "letter"
            parts.append(f"the {kind} {scene.glyph.char} {SLOT_PHRASES[slot]}")
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = text[0].upper() + text[1:] + "."
    if not counts:
        return text
    tally = ", ".join(f"{plural(shape)}: {scene.count(shape)}" for shape in SHAPES)
    return f"{text} {tally[0].upper()}{tally[1:]}."


# ---------------------------------------------------------------- text-only questions (SFT set, stage-2 text samples)

TEXT_ONLY_TYPES = ("arithmetic", "sides", "next_letter", "compare", "color_mix", "spelling")
_SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
_MIXES = {("blue", "yellow"): "green", ("red", "yellow"): "orange", ("red", "blue"): "purple"}


def ask_text_only(rng: random.Random, question_type: str) -> tuple[str, str]:
    """A question about numbers, letters and the world's vocabulary, answered in one word."""
    if question_type == "arithmetic":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if rng.random() < 0.5:
            return f"What is {a} plus {b}?", str(a + b)
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", str(a - b)
    if question_type == "sides":
        shape = rng.choice(list(_SIDES))
        return f"How many sides does a {shape} have?", str(_SIDES[shape])
    if question_type == "next_letter":
        letter = rng.choice(string.ascii_uppercase[:-1])
        return f"Which letter comes after {letter}?", chr(ord(letter) + 1)
    if question_type == "compare":
        a, b = rng.sample(range(20), 2)
        return f"Which number is larger, {a} or {b}?", str(max(a, b))
    if question_type == "color_mix":
        (first, second), result = rng.choice(list(_MIXES.items()))
        if rng.random() < 0.5:
            first, second = second, first
        return f"What color do you get by mixing {first} and {second}?", result
    if question_type == "spelling":
        word = rng.choice(list(COLORS) + list(SHAPES))
        return f"How many letters are in the word {word}?", str(len(word))
    raise ValueError(f"unknown text-only question type {question_type!r}")
