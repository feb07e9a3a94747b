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
# Seeds feed numpy's generator in the ONNX runtime's sampler, which takes 0 .. 2**32-1 (torch takes more): one range
# for every backend, so a seed that works on one works on all.
MAX_SEED = 2**32 - 1


NON_FINITE_OUTPUT = ("the model's output holds NaN or infinity: its weights are damaged (or overflow in this "
                     "precision); a bundle can be checked with `edge-vlm info BUNDLE`")


GREEDY_BELOW = 1e-30  # a temperature below this decodes greedily (see GenerationConfig.greedy)


@dataclass
class GenerationConfig:
    """Decoding settings. temperature 0 (or below GREEDY_BELOW) means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_at_eos: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise EdgeVLMError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature < float("inf"):  # written so that NaN fails too
            raise EdgeVLMError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EdgeVLMError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise EdgeVLMError(f"seed must be an integer from 0 to {MAX_SEED} (2**32-1), got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        # Below GREEDY_BELOW sampling is greedy decoding in effect (any two distinct float32 logits, divided by it,
        # are hundreds of nats apart), while the division itself overflows to inf and the softmax gives NaN.
        return self.temperature < GREEDY_BELOW


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
    """A multi-turn conversation about one image (or none): keeps the history, returns or streams each answer.

    When the next prompt plus `max_new_tokens` would not fit the model's context, the oldest question/answer turns
    are dropped; the system prompt and the image stay (the template puts the image in front of the first remaining
    question). `dropped_turns` counts them, so a caller can tell the user. A question that does not fit even with
    no history is refused (EdgeVLMError) and the history is left as it was."""

    def __init__(self, engine: Engine, image: ImageInput | None = None, config: GenerationConfig | None = None):
        self.engine = engine
        self.config = config or GenerationConfig()
        self.prepared = engine.prepare_image(image) if image is not None else None
        self.history: list[tuple[str, str]] = []
        self.dropped_turns = 0

    def stream(self, question: str) -> Iterator[str]:
        check_question(question)
        self._make_room(question)
        pieces: list[str] = []
        for piece in self.engine.stream(self.prepared, question, self.history, self.config):
            pieces.append(piece)
            yield piece
        self.history.append((question, "".join(pieces).strip()))

    def ask(self, question: str) -> str:
        return "".join(self.stream(question)).strip()

    def _prompt_length(self, question: str, history: list[tuple[str, str]]) -> int:
        prompt = inference_prompt(question, history, has_image=self.prepared is not None)
        return len(self.engine.tokenizer.encode_prompt(prompt, self.engine.num_image_tokens))

    def _make_room(self, question: str) -> None:
        """Drop the oldest turns until prompt + max_new_tokens fits the context (see the class docstring)."""
        if getattr(self.engine, "tokenizer", None) is None:  # an engine without a tokenizer keeps its own limits
            return
        context = self.engine.context_length
        alone = self._prompt_length(question, [])
        if alone >= context:
            image = f" with the image's {self.engine.num_image_tokens} tokens" if self.prepared is not None else ""
            raise EdgeVLMError(f"the question is {alone} tokens{image}, and the model's context is {context}: "
                               "ask a shorter question")
        budget = context - self.config.max_new_tokens
        while self.history and self._prompt_length(question, self.history) > budget:
            self.history.pop(0)
            self.dropped_turns += 1


def check_question(question: str, what: str = "the question") -> str:
    """A question must be non-empty UTF-8 text without `<image>` (the template places the image). Python decodes
    command-line arguments (and some stdin) with 'surrogateescape', so bytes that are not UTF-8 arrive as lone
    surrogates: refused here, naming the byte, before a tokenizer fails on them."""
    if not isinstance(question, str) or not question.strip():
        raise EdgeVLMError(f"{what} is empty")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(question[exc.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise EdgeVLMError(f"{what} is not valid UTF-8 text ({byte} at character {exc.start + 1})") from None
    if IMAGE_PLACEHOLDER in question:  # the template places the image; refused here, before a model loads
        raise EdgeVLMError(f"{what} contains {IMAGE_PLACEHOLDER}; pass the image separately")
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
