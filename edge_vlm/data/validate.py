"""Check training samples before a run and report every bad one, by kind, with counts and ids.

Policy `on_error`: "skip" drops the bad samples and goes on, "stop" raises. Either way a summary is printed:
nothing is dropped silently, and nothing is truncated (a sample longer than the context would lose its answer,
or its image, without anyone noticing). Torch-free.

Pictures: every image path is checked (present, a regular file, not empty) with one stat. `decode_images=True`
(`edge-vlm data validate`) also decodes every picture with the training loader (edge_vlm.imaging.read_rgb: the
checks and the decoding of `preprocess`, without the resize) and reports each bad one with its file and reason. A
training run does not decode ahead (LLaVA-665K would take an hour); the dataset skips or stops on a bad picture when
it reads it (edge_vlm.data.dataset, `on_bad_sample`).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edge_vlm.data.formats import BAD_RECORD, IMAGE_TAG_MISPLACED, ROLES_NOT_ALTERNATING, Sample
from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageConfig, read_rgb
from edge_vlm.prompting import IMAGE_PLACEHOLDER, Segment, render_chat, render_plain

STAGES = ("sft", "pretrain", "finetune")
POLICIES = ("skip", "stop")

MISSING_IMAGE = "missing_image"
BAD_IMAGE = "bad_image"
IMAGE_TAG_MISSING = "image_tag_missing"
IMAGE_TAG_DOUBLED = "image_tag_doubled"
IMAGE_TAG_IN_TEXT_SAMPLE = "image_tag_in_text_sample"
EMPTY_TURN = "empty_turn"
TOO_LONG = "too_long"
IMAGE_REQUIRED = "image_required"
IMAGE_IN_TEXT_STAGE = "image_in_text_stage"

# kind -> what it means and how to fix it (printed in the summary)
PROBLEM_KINDS = {
    BAD_RECORD: "malformed record (no conversations list, unknown role, or a non-string image path)",
    ROLES_NOT_ALTERNATING: "roles do not alternate user/assistant starting with the user, or the last answer is missing",
    MISSING_IMAGE: "image file not found under the image root",
    BAD_IMAGE: "image file unusable: not a regular file, empty, not a picture, truncated or damaged, or too large",
    IMAGE_TAG_MISSING: "image sample without <image> in its conversation",
    IMAGE_TAG_DOUBLED: "more than one <image> in an image sample",
    IMAGE_TAG_MISPLACED: "<image> is not in the first question",
    IMAGE_TAG_IN_TEXT_SAMPLE: "<image> in a sample that has no image",
    EMPTY_TURN: "an empty question or answer",
    TOO_LONG: "longer than the context after image expansion",
    IMAGE_REQUIRED: "stage 'pretrain' needs an image in every sample",
    IMAGE_IN_TEXT_STAGE: "stage 'sft' is text-only but the sample has an image",
}


@dataclass
class ValidationReport:
    """What validation found. `problems` maps a kind to the ids of the samples that have it (a sample may have
    several kinds); `skipped` is the number of samples dropped; `image_reasons` maps the id of a sample whose picture
    is unusable to what is wrong with it (the file and the reason)."""

    total: int
    kept: int
    stage: str
    problems: dict[str, list[str]] = field(default_factory=dict)
    lengths_checked: bool = False
    max_length: int | None = None
    source: str | None = None
    image_reasons: dict[str, str] = field(default_factory=dict)
    images_decoded: bool = False

    @property
    def skipped(self) -> int:
        return self.total - self.kept

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return {kind: len(ids) for kind, ids in self.problems.items()}

    def _head(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"validated {self.total} {self.stage} samples{where}"

    def summary(self, first: int = 5) -> str:
        """Several lines: totals, then one line a problem kind with its count, meaning and first ids."""
        lines = [f"{self._head()}: {self.kept} kept, {self.skipped} with problems"]
        for kind, ids in self.problems.items():
            shown = ", ".join(ids[:first]) + (", ..." if len(ids) > first else "")
            lines.append(f"  {kind}: {len(ids)} ({PROBLEM_KINDS.get(kind, kind)}): {shown}")
        lines.extend(f"    {sample_id}: {reason}" for sample_id, reason in self.image_reasons.items())
        if not self.images_decoded:
            lines.append("  (pictures not decoded: their files were checked, their contents were not)")
        if not self.lengths_checked:
            lines.append("  (lengths not checked: give a tokenizer and a context length)")
        elif self.max_length is not None:
            lines.append(f"  longest kept sample: {self.max_length} tokens")
        return "\n".join(lines)

    def one_line(self, first: int = 3) -> str:
        parts = [f"{kind} {len(ids)} [{', '.join(ids[:first])}{', ...' if len(ids) > first else ''}]"
                 for kind, ids in self.problems.items()]
        return f"{self._head()}: {self.skipped} with problems: " + "; ".join(parts)


def _has_tag(turns: Sequence[tuple[str, str]]) -> bool:
    return any(IMAGE_PLACEHOLDER in q or IMAGE_PLACEHOLDER in a for q, a in turns)


def _structure_problems(sample: Sample, stage: str) -> list[str]:
    kinds = list(dict.fromkeys(sample.issues))
    if sample.has_image:
        if stage == "sft":
            kinds.append(IMAGE_IN_TEXT_STAGE)
        if sample.image_tags == 0:
            kinds.append(IMAGE_TAG_MISSING)
        elif (sample.image_tags or 0) > 1 or (sample.image_tags is None and _has_tag(sample.turns)):
            kinds.append(IMAGE_TAG_DOUBLED)
    else:
        if stage == "pretrain":
            kinds.append(IMAGE_REQUIRED)
        if (sample.image_tags or 0) > 0 or _has_tag(sample.turns):
            kinds.append(IMAGE_TAG_IN_TEXT_SAMPLE)
    if not sample.turns:
        if not sample.issues:  # a malformed record has no turns already: one report is enough
            kinds.append(EMPTY_TURN)
    elif stage == "pretrain":  # the plain template uses the first answer (the caption) alone
        if not sample.turns[0][1].strip():
            kinds.append(EMPTY_TURN)
    elif any(not q.strip() or not a.strip() for q, a in sample.turns):
        kinds.append(EMPTY_TURN)
    return list(dict.fromkeys(kinds))


def image_problem(path: Path, decode: bool, config: ImageConfig) -> tuple[str, str] | None:
    """(kind, reason) when the picture at `path` cannot be used, else None. Without `decode`, one stat only."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return MISSING_IMAGE, f"image not found: {path}"
    except OSError as exc:  # a symlink loop, a path through a file, no permission
        return BAD_IMAGE, f"cannot read image {path}: {exc.strerror or exc}"
    if decode:
        try:
            read_rgb(path, config)
        except EdgeVLMError as exc:
            return BAD_IMAGE, str(exc)
    elif not stat.S_ISREG(info.st_mode):
        return BAD_IMAGE, f"image {path} is not a regular file"
    elif info.st_size == 0:
        return BAD_IMAGE, f"image {path} is empty (0 bytes)"
    return None


def _image_problems(paths: list[Path], decode: bool, config: ImageConfig) -> dict[Path, tuple[str, str]]:
    """image_problem of each distinct path (a picture shared by several samples is read once). Decoding runs on
    threads: PIL releases the GIL while it decodes."""
    from tqdm import tqdm

    unique = list(dict.fromkeys(paths))
    if not decode:
        results = [image_problem(path, False, config) for path in unique]
    else:
        # A few threads only: each may hold a decoded picture of up to imaging.MAX_IMAGE_PIXELS.
        results = []
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool, \
                tqdm(total=len(unique), desc="decoding pictures", unit="picture", disable=len(unique) < 1000) as bar:
            for start in range(0, len(unique), 256):  # in chunks, so that 665k paths are not 665k futures at once
                done = list(pool.map(lambda path: image_problem(path, True, config), unique[start:start + 256]))
                results.extend(done)
                bar.update(len(done))
    return {path: found for path, found in zip(unique, results) if found is not None}


def resolve_image(image: str, image_root: str | Path | None) -> Path:
    """An image path of a record, relative to `image_root` unless absolute."""
    path = Path(image)
    return path if path.is_absolute() or image_root is None else Path(image_root) / path


def render_sample(sample: Sample, stage: str) -> list[Segment]:
    """The template segments of a sample for a stage (the same rendering the dataset trains on)."""
    if stage == "pretrain":
        return render_plain(sample.turns[0][1])
    return render_chat(list(sample.turns), has_image=stage == "finetune" and sample.has_image)


def sample_lengths(samples: Sequence[Sample], stage: str, tokenizer, num_image_tokens: int,
                   chunk: int = 4096) -> list[int]:
    """Token count of each sample after `<image>` expansion. Encoded in batches (tokenizers runs a batch in
    parallel), with a progress bar for large files (LLaVA-665K takes a while)."""
    from tqdm import tqdm

    image_id = tokenizer.image_token_id
    lengths: list[int] = []
    starts = range(0, len(samples), chunk)
    for start in tqdm(starts, desc="checking lengths", unit="chunk", disable=len(samples) < 5 * chunk):
        texts = ["".join(seg.text for seg in render_sample(s, stage)) for s in samples[start:start + chunk]]
        for encoding in tokenizer.backend.encode_batch(texts, add_special_tokens=False):
            lengths.append(len(encoding.ids) + encoding.ids.count(image_id) * (num_image_tokens - 1))
    return lengths


def validate(samples: Sequence[Sample], *, stage: str = "finetune", image_root: str | Path | None = None,
             tokenizer=None, num_image_tokens: int = 0, context_length: int | None = None, on_error: str = "skip",
             source: str | None = None, log: Callable[[str], None] | None = None, decode_images: bool = False,
             image_config: ImageConfig | None = None) -> tuple[list[Sample], ValidationReport]:
    """Check every sample for `stage`; return (kept samples, report) and print the report's summary.

    Lengths are checked when `tokenizer` (a TextTokenizer) and `context_length` are given; `num_image_tokens` is
    the model's image-token count. `decode_images` decodes every picture as training reads it, with `image_config`
    (default: the stage's LLaVA default, 'square' for pretrain and 'pad' otherwise, at 336 px).
    `on_error="stop"` raises EdgeVLMError naming the kinds and first ids.
    """
    if stage not in STAGES:
        raise EdgeVLMError(f"unknown stage {stage!r}; choose one of {STAGES}")
    if on_error not in POLICIES:
        raise EdgeVLMError(f"on_error must be one of {POLICIES}, got {on_error!r}")
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    root = Path(image_root) if image_root is not None else None
    problems: dict[str, list[str]] = {}
    bad: set[int] = set()
    found: dict[int, list[str]] = {}
    for index, sample in enumerate(samples):
        found[index] = _structure_problems(sample, stage)
    config = image_config or ImageConfig(aspect="square" if stage == "pretrain" else "pad")
    with_image = [i for i, s in enumerate(samples) if s.has_image and stage != "sft"]
    paths = {i: resolve_image(samples[i].image, root) for i in with_image}
    image_problems = _image_problems(list(paths.values()), decode_images, config)
    reasons: dict[str, str] = {}
    for index, path in paths.items():
        if path in image_problems:
            kind, reason = image_problems[path]
            found[index].insert(0, kind)
            if kind == BAD_IMAGE:
                reasons[samples[index].id] = reason
    for index, kinds in found.items():
        for kind in kinds:
            problems.setdefault(kind, []).append(samples[index].id)
            bad.add(index)
    check_lengths = tokenizer is not None and context_length is not None
    max_length = None
    if check_lengths:
        candidates = [i for i in range(len(samples)) if i not in bad]
        lengths = sample_lengths([samples[i] for i in candidates], stage, tokenizer, num_image_tokens)
        for index, length in zip(candidates, lengths):
            if length > context_length:
                problems.setdefault(TOO_LONG, []).append(samples[index].id)
                bad.add(index)
            else:
                max_length = max(max_length or 0, length)
    kept = [sample for index, sample in enumerate(samples) if index not in bad]
    report = ValidationReport(total=len(samples), kept=len(kept), stage=stage, problems=problems,
                              lengths_checked=check_lengths, max_length=max_length, source=source,
                              image_reasons=reasons, images_decoded=decode_images)
    log(report.summary())
    if problems and on_error == "stop":
        raise EdgeVLMError(f"{report.one_line()}; fix the data or use on_error='skip' to drop these samples")
    return kept, report
