"""What every benchmark shares: the question item, the benchmark interface, file readers and prompt helpers.

A benchmark reads the evaluation files as LLaVA-1.5 distributes them (docs/Evaluation.md: one folder per benchmark
under playground/data/eval), turns each question into an EvalItem (the exact text the model is asked), writes the
official submission files from the answers and scores offline where the answers are public.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_vlm.configfile import parse_json, read_text_file
from edge_vlm.errors import EdgeVLMError
from edge_vlm.fileio import atomic_write

# Reference §8 / LLaVA docs/Evaluation.md: the prompt suffixes, byte-exact.
SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
IMAGE_TAG = "<image>"


@dataclass
class ImageRef:
    """Where an item's image comes from: a file, or base64 bytes (MMBench's TSV). `key` groups questions that
    share an image so the runner prepares it once."""

    path: Path | None = None
    b64: str | None = None
    key: str = ""

    def __post_init__(self):
        if not self.key:
            self.key = str(self.path) if self.path is not None else f"b64:{hash(self.b64)}"

    def open(self):
        """The image as something edge_vlm.imaging.load_image accepts (a path or a decoded PIL image)."""
        if self.path is not None:
            return self.path
        import binascii

        from edge_vlm.imaging import decode_image_bytes

        try:
            data = base64.b64decode(self.b64, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise EdgeVLMError(f"the base64 image {self.key} is not valid base64: {exc}") from exc
        return decode_image_bytes(data, f"(base64, {self.key})")


@dataclass
class EvalItem:
    """One question. `prompt` is what the model is asked (no <image>: the template places it); `record_prompt` is
    the "prompt" field LLaVA writes into its answer files (official converters read it back)."""

    question_id: Any
    prompt: str
    image: ImageRef | None
    record_prompt: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.record_prompt:
            self.record_prompt = self.prompt

    @property
    def key(self) -> str:
        """Unique within a run even where ids repeat (TextVQA keys by image and question): id plus prompt."""
        return answer_key(self.question_id, self.record_prompt)


def answer_key(question_id: Any, record_prompt: str) -> str:
    return json.dumps([question_id, record_prompt], ensure_ascii=False)


@dataclass
class Dataset:
    """The items of one benchmark as read from `root`, plus what the scorer needs to find its ground truth."""

    benchmark: str
    root: Path
    question_file: Path
    items: list[EvalItem]
    extra: dict = field(default_factory=dict)


class Benchmark:
    """Base class. Subclasses set the class attributes and implement `read`; `submit` and `score` are optional."""

    name: str = ""
    title: str = ""
    llava_folder: str = ""  # its folder under LLaVA's playground/data/eval
    question_files: tuple[str, ...] = ()  # first existing one is used
    image_folders: tuple[str, ...] = (".",)  # relative to the data dir, tried in order
    max_new_tokens: int = 128
    aspect: str | None = None  # LP's preprocessing for this benchmark when it differs from the model's default
    headline: str | None = None  # the metric the comparison table shows (a key of score()'s result)
    offline: str = ""  # one line: what is scored offline, and with which files

    def locate(self, data_dir: str | Path, question_file: str | Path | None = None) -> tuple[Path, Path]:
        """(benchmark root, question file). `data_dir` may be the benchmark's folder or LLaVA's eval root."""
        root = Path(data_dir)
        if not root.is_dir():
            raise EdgeVLMError(f"--data {root} is not a directory")
        if (root / self.llava_folder).is_dir() and not self._find_question_file(root):
            root = root / self.llava_folder
        if question_file is not None:
            path = Path(question_file)
            if not path.is_absolute() and not path.exists():
                path = root / path
            if not path.is_file():
                raise EdgeVLMError(f"question file not found: {path}")
            return root, path
        found = self._find_question_file(root)
        if found is None:
            raise EdgeVLMError(
                f"no {self.name} question file in {root}: expected one of {', '.join(self.question_files)} "
                f"(LLaVA's playground/data/eval/{self.llava_folder} layout) or pass --question-file"
            )
        return root, found

    def _find_question_file(self, root: Path) -> Path | None:
        for name in self.question_files:
            matches = sorted(root.glob(name))
            if matches:
                return matches[0]
        return None

    def image_root(self, root: Path, first_image: str | None, image_folder: str | Path | None) -> Path:
        """The folder the question file's image paths are relative to (checked on the first image)."""
        if image_folder is not None:
            folder = Path(image_folder)
            if not folder.is_absolute() and not folder.exists():
                folder = root / folder
            if not folder.is_dir():
                raise EdgeVLMError(f"--image-folder {folder} is not a directory")
            candidates = [folder]
        else:
            candidates = [root / sub for sub in self.image_folders]
        if first_image is None:
            return candidates[0]
        for folder in candidates:
            if (folder / first_image).is_file():
                return folder
        tried = ", ".join(str(c / first_image) for c in candidates)
        raise EdgeVLMError(
            f"{self.name}: image {first_image!r} not found (tried {tried}); put the images where LLaVA's "
            f"docs/Evaluation.md says or pass --image-folder"
        )

    def load(self, data_dir, question_file=None, image_folder=None) -> Dataset:
        root, path = self.locate(data_dir, question_file)
        try:
            dataset = self.read(root, path, image_folder)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
            # a record of the wrong shape (a number where text belongs, a list where a record belongs): the file
            # is the user's, so this is a bad input, not a bug; --debug shows where it was found
            raise EdgeVLMError(f"{path}: not a {self.title} question file as LLaVA lays it out "
                               f"({type(exc).__name__}: {exc})") from exc
        if not dataset.items:
            raise EdgeVLMError(f"{path} holds no questions")
        ids = [item.key for item in dataset.items]
        if len(set(ids)) != len(ids):
            raise EdgeVLMError(f"{path}: some questions repeat with the same id and text; remove the duplicates")
        return dataset

    def read(self, root: Path, question_file: Path, image_folder) -> Dataset:
        raise NotImplementedError

    def submit(self, dataset: Dataset, answers: dict[str, dict], out_dir: Path, label: str) -> list[Path]:
        """Write the official submission / evaluation-tool files; returns their paths."""
        return []

    def score(self, dataset: Dataset, items: list[EvalItem], answers: dict[str, dict]) -> dict | None:
        """Offline scores of `items` (answers keyed by item.key), or None when the answers are not public."""
        return None


# --------------------------------------------------------------------------------------------- file helpers
def read_json(path: Path, what: str = "JSON file") -> Any:
    """A user's JSON file; anything wrong (missing, binary, not UTF-8, not JSON) is one line naming the file."""
    return parse_json(read_text_file(path, what, kind="JSON"), path, what)


def read_jsonl(path: Path, what: str = "JSON lines file") -> list[dict]:
    """One JSON object per line (blank lines skipped); a bad line is an error naming the line."""
    records = []
    for number, line in enumerate(read_text_file(path, what, kind="JSON").splitlines(), 1):
        if not line.strip():
            continue
        record = parse_json(line, path, what, first_line=number)
        if not isinstance(record, dict):
            raise EdgeVLMError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        records.append(record)
    return records


def require_keys(record: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise EdgeVLMError(f"{where}: missing {', '.join(missing)} (keys present: {', '.join(sorted(record))})")


def write_json_atomic(path: Path, data: Any, indent: int | None = None) -> Path:
    """Write JSON through a temp file in the same folder, then rename (never a half-written file)."""
    return atomic_write(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n", "result file")


def write_atomic(path: Path, write: Callable[[io.BytesIO], None]) -> Path:
    """Call write(buffer) and put the bytes in place atomically (for writers that take a file object, e.g. openpyxl)."""
    buffer = io.BytesIO()
    write(buffer)
    return atomic_write(path, buffer.getvalue(), "result file")


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, text, "result file")


# ------------------------------------------------------------------------------------------- prompt helpers
def strip_image_tag(text: str) -> str:
    """A question without LLaVA's `<image>` tag (model_vqa_science: replace it, then strip)."""
    return text.replace(IMAGE_TAG, "").strip()


def with_suffix(text: str, *lines: str) -> str:
    """`text` followed by each line on its own line, unless the file already carries the final suffix
    (LLaVA's distributed question files mostly do)."""
    if not lines or text.rstrip().endswith(lines[-1]):
        return text
    for line in lines:
        if line not in text:
            text = f"{text}\n{line}"
    return text


def text_answers(answers: list) -> list[str]:
    """Ground-truth answers as strings, from ["a", ...] or the VQA/VizWiz shape [{"answer": "a", ...}, ...]."""
    return [a["answer"] if isinstance(a, dict) else str(a) for a in answers]


def answer_text(answers: dict[str, dict], item: EvalItem) -> str | None:
    record = answers.get(item.key)
    return None if record is None else record["text"]
