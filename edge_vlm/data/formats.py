"""Readers for the training data formats: LLaVA JSON (image conversations) and ShareGPT (text conversations).

Both are a list of records `{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}`
(docs/recipe.md), stored as one JSON list (.json) or one record a line (.jsonl). A reader never drops or repairs a
record silently: what is wrong with a record's structure is written into `Sample.issues`, and
`edge_vlm.data.validate` reports (and skips or stops on) those together with the checks that need files or a
tokenizer. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_vlm.configfile import parse_json, read_text_file
from edge_vlm.errors import EdgeVLMError
from edge_vlm.prompting import IMAGE_PLACEHOLDER

# Spellings of the two roles found in LLaVA, ShareGPT / Vicuna and OpenAI-style chat files.
USER_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "bing", "model"})
SYSTEM_ROLES = frozenset({"system"})

# Problem kinds a reader can record (validate.py adds the ones that need files, a tokenizer or the stage).
BAD_RECORD = "bad_record"
ROLES_NOT_ALTERNATING = "roles_not_alternating"
IMAGE_TAG_MISPLACED = "image_tag_misplaced"


@dataclass
class Sample:
    """One training conversation.

    `turns` are (question, answer) pairs; for an image sample the `<image>` placeholder has been taken out of the
    first question (the template puts `<image>\\n` back in front, edge_vlm.prompting.render_chat).
    `image` is a path relative to an image root (or absolute), None for text-only samples.
    `extra` keeps the record's other keys (question_type, answer, ...).
    `image_tags` is how many `<image>` placeholders the source record had (None when the sample was built in code,
    so the "placeholder missing" check cannot apply); `issues` lists problem kinds found while reading it.
    """

    id: str
    image: str | None
    turns: list[tuple[str, str]]
    extra: dict = field(default_factory=dict)
    image_tags: int | None = None
    issues: list[str] = field(default_factory=list)

    @property
    def has_image(self) -> bool:
        return self.image is not None


def _load_records(path: str | Path) -> list:
    """The records of a .json list or a .jsonl file. Read through configfile (a FIFO or a device is refused before it
    is opened, a file over MAX_TEXT_BYTES before it is read) and parsed as strict JSON: every problem is one line
    naming the file and, where known, the line."""
    path = Path(path)
    text = read_text_file(path, "data file", kind="JSON")
    if path.suffix == ".jsonl":
        return [parse_json(line, path, "data file", first_line=number)
                for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    try:
        data = parse_json(text, path, "data file")
    except EdgeVLMError as exc:
        if "Extra data" not in str(exc):  # what json says after the first of several records, one a line
            raise
        raise EdgeVLMError(f"{exc}; a file with one record a line must be named .jsonl") from exc
    if not isinstance(data, list):
        raise EdgeVLMError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _messages(record: dict) -> list | None:
    """The record's messages as (role, text) or None when it has no readable conversation."""
    raw = record.get("conversations")
    if raw is None:
        raw = record.get("messages")  # OpenAI-style files use messages/role/content
    if not isinstance(raw, list):
        return None
    out = []
    for message in raw:
        if not isinstance(message, dict):
            return None
        role = message.get("from", message.get("role"))
        text = message.get("value", message.get("content"))
        if not isinstance(role, str) or not isinstance(text, str):
            return None
        out.append((role.strip().lower(), text))
    return out


def _pair_turns(messages: list[tuple[str, str]], issues: list[str]) -> list[tuple[str, str]] | None:
    """(role, text) messages -> (question, answer) turns; None (with an issue) for an unknown role."""
    if messages and messages[0][0] in SYSTEM_ROLES:
        messages = messages[1:]  # a leading system prompt is replaced by the template's own
    roles = []
    for role, _ in messages:
        if role in USER_ROLES:
            roles.append("user")
        elif role in ASSISTANT_ROLES:
            roles.append("assistant")
        else:  # an unknown role, or a system turn in the middle
            issues.append(BAD_RECORD)
            return None
    expected = ["user", "assistant"] * (len(messages) // 2 + 1)
    if not messages or len(messages) % 2 or roles != expected[: len(roles)]:
        issues.append(ROLES_NOT_ALTERNATING)
    # Pair what can be paired, so the report can still say more about the sample.
    turns, pending = [], None
    for role, (_, text) in zip(roles, messages):
        if role == "user":
            pending = text
        elif pending is not None:
            turns.append((pending, text))
            pending = None
    return turns


def _strip_image_tag(question: str) -> str:
    """Take the first `<image>` out of a question with the whitespace around it: LLaVA's preprocessing does the same
    (replace, strip, then put `<image>\\n` in front, which our template does). A second placeholder stays, so that
    validation reports the sample as doubled."""
    return question.replace(IMAGE_PLACEHOLDER, "", 1).strip()


def record_to_sample(record, index: int, source: str, allow_image: bool = True) -> Sample:
    """One JSON record -> Sample; structural problems go into `issues` instead of raising."""
    if not isinstance(record, dict):
        return Sample(id=f"{source}#{index}", image=None, turns=[], issues=[BAD_RECORD])
    sample_id = str(record["id"]) if record.get("id") is not None else f"{source}#{index}"
    extra = {k: v for k, v in record.items() if k not in ("id", "image", "conversations", "messages")}
    issues: list[str] = []
    image = record.get("image") if allow_image else None
    if not allow_image and "image" in record:
        extra["image"] = record["image"]
    if image is not None and (not isinstance(image, str) or not image.strip()):
        issues.append(BAD_RECORD)  # a list of images (multi-image formats) or an empty path: not LLaVA-1.5 data
        image = None
    messages = _messages(record)
    if messages is None:
        return Sample(id=sample_id, image=image, turns=[], extra=extra, issues=[*issues, BAD_RECORD])
    turns = _pair_turns(messages, issues) or []
    tags = sum(text.count(IMAGE_PLACEHOLDER) for _, text in messages)
    if image is not None and turns:
        first_question = turns[0][0]
        if IMAGE_PLACEHOLDER in first_question:
            turns[0] = (_strip_image_tag(first_question), turns[0][1])
        elif tags:
            issues.append(IMAGE_TAG_MISPLACED)  # only in a later turn or in an answer
    return Sample(id=sample_id, image=image, turns=turns, extra=extra, image_tags=tags, issues=issues)


def read_llava_json(path: str | Path) -> list[Sample]:
    """Read a LLaVA JSON (.json list) or JSON-lines (.jsonl) file of image / text conversations."""
    records = _load_records(path)
    source = Path(path).name
    return [record_to_sample(record, index, source) for index, record in enumerate(records)]


def read_sharegpt(path: str | Path) -> list[Sample]:
    """Read a ShareGPT / Vicuna conversation file (text only; a leading system turn is skipped).
    An `image` key, if any, is kept in `extra` and never loaded."""
    records = _load_records(path)
    source = Path(path).name
    return [record_to_sample(record, index, source, allow_image=False) for index, record in enumerate(records)]
