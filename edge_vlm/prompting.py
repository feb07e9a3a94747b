"""Conversation templates of LLaVA-Phi, byte-exact with LP's `conversation.py` (docs/prompts.md).

The renderer returns the text as *segments* flagged supervised or not, so training can mask labels by
character span (docs/prompts.md: each answer and its `<|endoftext|>` are supervised, everything else is not)
and inference can use the very same text. Torch-free: the runtime uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_vlm.errors import EdgeVLMError

IMAGE_PLACEHOLDER = "<image>"
EOS_TEXT = "<|endoftext|>"

PHI2_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str
    assistant: str
    sep: str  # after the system prompt and after each user turn
    sep2: str  # after each assistant answer


PHI2_V0 = Template("phi-2_v0", PHI2_SYSTEM, "USER", "ASSISTANT", " ", EOS_TEXT)
# LP registers the same template under these names too.
TEMPLATES = {"phi-2_v0": PHI2_V0, "default": PHI2_V0, "v0": PHI2_V0}
TEMPLATE_NAMES = ("phi-2_v0", "plain")


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool


def _check_turns(turns: list[tuple[str, str | None]]) -> None:
    if not turns:
        raise EdgeVLMError("a conversation needs at least one user turn")
    for index, (question, answer) in enumerate(turns):
        if not isinstance(question, str) or not question.strip():
            raise EdgeVLMError(f"turn {index + 1}: the question is empty")
        if answer is None and index != len(turns) - 1:
            raise EdgeVLMError(f"turn {index + 1}: only the last turn may be unanswered")


def render_chat(
    turns: list[tuple[str, str | None]], has_image: bool = True, template: str = "phi-2_v0"
) -> list[Segment]:
    """Render (question, answer) turns with the phi-2_v0 template.

    `<image>\\n` is put in front of the first question when `has_image` (LP always puts it first). A final turn
    with answer None renders the inference prompt, ending in `ASSISTANT:` with no trailing space.
    Questions must not contain `<image>` themselves: the template places it.
    """
    if template not in TEMPLATES:
        raise EdgeVLMError(f"unknown template {template!r}; choose one of {TEMPLATE_NAMES}")
    tpl = TEMPLATES[template]
    _check_turns(turns)
    segments: list[Segment] = []
    prompt = tpl.system + tpl.sep
    for index, (question, answer) in enumerate(turns):
        if IMAGE_PLACEHOLDER in question:
            raise EdgeVLMError(f"turn {index + 1}: the question contains {IMAGE_PLACEHOLDER}; pass the image separately")
        if index == 0 and has_image:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
        prompt += f"{tpl.user}: {question}{tpl.sep}{tpl.assistant}:"
        if answer is None:
            break
        # The space after `ASSISTANT:` goes with the answer: byte-level BPE glues it to the answer's first word,
        # so masking by character span supervises that whole first token (the off-by-one of LP's old code).
        segments.append(Segment(prompt, False))
        segments.append(Segment(f" {answer}{tpl.sep2}", True))
        prompt = ""
    if prompt:
        segments.append(Segment(prompt, False))
    return segments


def render_plain(caption: str) -> list[Segment]:
    """Stage 1 (`plain`): `<image>{caption}\\n`; the caption and the newline are supervised, the image is not."""
    if not isinstance(caption, str) or not caption.strip():
        raise EdgeVLMError("the caption is empty")
    return [Segment(IMAGE_PLACEHOLDER, False), Segment(f"{caption}\n", True)]


def to_text(segments: list[Segment]) -> str:
    return "".join(segment.text for segment in segments)


def inference_prompt(question: str, history: list[tuple[str, str]] | None = None, has_image: bool = True) -> str:
    """The prompt for the next answer, after `history` (earlier (question, answer) turns)."""
    turns: list[tuple[str, str | None]] = [*(history or []), (question, None)]
    return to_text(render_chat(turns, has_image=has_image))
