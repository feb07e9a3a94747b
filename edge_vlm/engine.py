"""The one interface every backend answers through (PyTorch checkpoint, ONNX bundle), torch-free.

Used by `ask`, `eval`, `stream` and `bench`. An engine works in two steps so that several questions about one
image reuse its vision features and the prefill of the shared prompt prefix:

    session = engine.prepare_image(image)          # preprocessing + vision tower + prefix prefill
    for piece in engine.stream(session, "What colour is the square?"):
        print(piece, end="")

`Chat` adds multi-turn history on top.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageInput
from edge_vlm.prompting import IMAGE_PLACEHOLDER, PHI2_SYSTEM, inference_prompt

# The prompt text shared by every first question about an image: cached once per image (see PreparedImage).
IMAGE_PREFIX = f"{PHI2_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n"


@dataclass
class GenerationConfig:
    """Decoding settings. temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_at_eos: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise EdgeVLMError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise EdgeVLMError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EdgeVLMError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class PreparedImage:
    """An image after the vision tower, with the KV cache of IMAGE_PREFIX (backend-specific objects)."""

    features: Any
    prefix_cache: Any
    prefix_ids: list[int]
    timings_ms: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    num_image_tokens: int
    context_length: int

    def prepare_image(self, image: ImageInput) -> PreparedImage: ...

    def stream(
        self,
        prepared: PreparedImage | None,
        question: str,
        history: list[tuple[str, str]] | None = None,
        config: GenerationConfig | None = None,
    ) -> Iterator[str]: ...


def answer(engine: Engine, prepared, question: str, history=None, config: GenerationConfig | None = None) -> str:
    """The whole answer as one string (stripped of the space the template puts before it)."""
    return "".join(engine.stream(prepared, question, history, config)).strip()


class Chat:
    """A multi-turn conversation about one image (or none): keeps the history, returns or streams each answer."""

    def __init__(self, engine: Engine, image: ImageInput | None = None, config: GenerationConfig | None = None):
        self.engine = engine
        self.config = config or GenerationConfig()
        self.prepared = engine.prepare_image(image) if image is not None else None
        self.history: list[tuple[str, str]] = []

    def stream(self, question: str) -> Iterator[str]:
        pieces: list[str] = []
        for piece in self.engine.stream(self.prepared, question, self.history, self.config):
            pieces.append(piece)
            yield piece
        self.history.append((question, "".join(pieces).strip()))

    def ask(self, question: str) -> str:
        return "".join(self.stream(question)).strip()


def check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise EdgeVLMError("the question is empty")
    return question


def prompt_ids(engine, prepared: PreparedImage | None, question: str, history, max_new_tokens: int
               ) -> tuple[list[int], int]:
    """The backends' common first step of `stream`: the whole prompt's token ids (question after `history`, about
    `prepared`'s image) and how many new tokens fit in the context. `engine` needs `tokenizer`, `num_image_tokens`
    and `context_length`. The prompt must start with the image's cached prefix, which the backend then reuses."""
    check_question(question)
    prompt = inference_prompt(question, history, has_image=prepared is not None)
    ids = engine.tokenizer.encode_prompt(prompt, engine.num_image_tokens)
    max_new = fit_new_tokens(len(ids), engine.context_length, max_new_tokens)
    if prepared is not None and ids[: len(prepared.prefix_ids)] != prepared.prefix_ids:
        raise EdgeVLMError("internal: the prompt does not start with the cached image prefix")
    return ids, max_new


def fit_new_tokens(prompt_len: int, context_length: int, max_new_tokens: int) -> int:
    """How many tokens may still be generated; a prompt that fills the context is an error."""
    if prompt_len >= context_length:
        raise EdgeVLMError(
            f"the prompt is {prompt_len} tokens but the model's context is {context_length}: shorten the question "
            "or the history"
        )
    return min(max_new_tokens, context_length - prompt_len)
