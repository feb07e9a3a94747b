"""The body of `POST /v1/chat/completions`, checked: OpenAI's request shape (validated by pydantic) turned into what
the engine answers, a question about at most one image after earlier (question, answer) turns.

The template is LLaVA-Phi's phi-2_v0 with its fixed system prompt, so a conversation is: an optional system message
that repeats that prompt, then user / assistant turns alternating, ending on a user turn; the image (one at most)
belongs to the first user turn, where the template puts it. Anything else is refused with a 400 that says why,
rather than answered from a prompt the client did not send.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from edge_vlm.engine import MAX_SEED, GenerationConfig
from edge_vlm.errors import EdgeVLMError
from edge_vlm.prompting import EOS_TEXT, IMAGE_PLACEHOLDER, PHI2_SYSTEM
from edge_vlm.serve.errors import APIError, bad_request

DEFAULT_MAX_TOKENS = 128  # as `edge-vlm ask`


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell a lone surrogate (\ud800), which is no text at all
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    return text


# Every string the server reads: text, stop sequences, the model name, image URLs.
Text = Annotated[str, AfterValidator(_valid_unicode)]


class _Strict(BaseModel):
    # strict: "0.5" is not a number, 1 is not a string; extra keys are allowed (clients send many we ignore)
    model_config = ConfigDict(strict=True, extra="allow")


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ImageURL(_Strict):
    url: Text
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[Part] | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    model: Text | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None


# Fields that would change the answer and that this server does not implement: refused, never silently ignored.
_UNSUPPORTED = {
    "tools": "tool calls", "functions": "function calls", "tool_choice": "tool calls",
    "function_call": "function calls", "logprobs": "log-probabilities", "top_logprobs": "log-probabilities",
    "logit_bias": "logit bias", "presence_penalty": "presence penalty", "frequency_penalty": "frequency penalty",
    "response_format": "response formats", "audio": "audio output", "prediction": "predicted outputs",
}


@dataclass
class ImageRef:
    url: str
    param: str


@dataclass
class Chat:
    """A checked request: what to answer and how."""

    question: str
    history: list[tuple[str, str]]
    image: ImageRef | None
    config: GenerationConfig
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    model: str | None = None


def parse_body(body: bytes) -> Chat:
    """Bytes of the request body -> Chat, or an APIError (400) naming the first thing wrong."""
    try:
        # UTF-8 only (RFC 8259; a leading BOM is ignored, as it allows): json.loads on bytes would also take UTF-16,
        # UTF-32 and encoded lone surrogates
        data = json.loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: it is not UTF-8 ({exc})", code="invalid_json") \
            from None
    except RecursionError:
        raise bad_request("the request body is not valid JSON this server reads: it is nested too deeply",
                          code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except ValueError:  # Python's limit on integer literals
        raise bad_request("the request body holds an integer of more than 4300 digits", code="invalid_json") \
            from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    if "messages" not in data:
        raise bad_request("'messages' is required: a list of {role, content} messages", "messages",
                          "missing_required_parameter")
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    return to_chat(request)


def _validation_error(exc: ValidationError) -> APIError:
    """The deepest problem pydantic found (for `content: str | list`, given a list, the part that is wrong rather than
    'should be a string'); where several union members fail at the same place, all their complaints."""
    found = []
    for error in exc.errors():
        # pydantic puts the union member it tried into the location ('str', 'list[...]', and a tagged union's tag
        # before the field: ..., 0, 'text', 'text'): keep the path only
        parts: list[str] = []
        for p in error["loc"]:
            if isinstance(p, int) or ("[" not in p and p not in _TYPE_TAGS and (not parts or parts[-1] != p)):
                parts.append(str(p))
        found.append((len(parts), ".".join(parts), error))
    depth = max(n for n, _, _ in found)
    deepest = [(param, error) for n, param, error in found if n == depth]
    param = deepest[0][0] or None
    here = [error for p, error in deepest if p == deepest[0][0]]
    # a value of the right type that is wrong says more than the union's other types it is not ('stop: not valid
    # Unicode' rather than '... or Input should be a valid list')
    here = [error for error in here if "type" not in error["type"]] or here
    messages = list(dict.fromkeys(error["msg"].removeprefix("Value error, ") for error in here))
    kind = here[0]["type"]
    code = "missing_required_parameter" if kind == "missing" else "invalid_type" if "type" in kind else "invalid_value"
    return bad_request(f"{param or 'request'}: {' or '.join(messages)}", param, code)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def to_chat(request: ChatRequest) -> Chat:
    extra = request.model_extra or {}
    for name, what in _UNSUPPORTED.items():
        value = extra.get(name)
        if value not in (None, False, 0, 0.0, {}, [], "text") and value != {"type": "text"}:
            raise bad_request(f"{what} ({name}) are not supported by this server", name, "unsupported_parameter")
    if request.n not in (None, 1):
        raise bad_request("only n=1 is supported (one answer per request)", "n", "unsupported_parameter")
    question, history, image = _conversation(request.messages)
    max_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS
    temperature = request.temperature or 0.0
    try:
        config = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature,
                                  top_p=1.0 if request.top_p is None else request.top_p,
                                  seed=request.seed)
    except EdgeVLMError as exc:  # the fields above check the same ranges: a backstop, never a 500
        raise bad_request(str(exc)) from None
    return Chat(question, history, image, config, _stops(request.stop), request.stream,
                bool(request.stream_options and request.stream_options.include_usage), request.model)


def _stops(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise bad_request("at most 4 stop sequences", "stop", "invalid_value")
    if any(not s for s in stops):
        raise bad_request("a stop sequence is empty", "stop", "invalid_value")
    return stops


def _conversation(messages: list[Message]) -> tuple[str, list[tuple[str, str]], ImageRef | None]:
    """(last question, earlier turns, the image) from OpenAI messages, following the template's rules."""
    turns: list[tuple[str, Message, int]] = []
    images: list[ImageRef] = []
    for index, message in enumerate(messages):
        param = f"messages.{index}"
        text, found = _content(message, param)
        if message.role in ("system", "developer"):
            if index != 0:
                raise bad_request("a system message may only come first", param, "invalid_value")
            if text.strip() != PHI2_SYSTEM:
                raise bad_request("this model answers with its own fixed system prompt (LLaVA-Phi's phi-2_v0 "
                                  "template): leave the system message out", param, "unsupported_parameter")
            continue
        images += found
        if found and message.role != "user":
            raise bad_request("only a user message can carry an image", param, "invalid_value")
        turns.append((message.role, text, index))
    if len(images) > 1:
        raise bad_request(f"too many images: {len(images)} were sent, this model takes one per conversation",
                          images[1].param, "too_many_images")
    roles = [role for role, _, _ in turns]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    if not roles or roles != expected or roles[-1] != "user":
        raise bad_request("messages must alternate user / assistant turns, starting and ending with a user message",
                          "messages", "invalid_value")
    if images and images[0].param.split(".")[1] != str(turns[0][2]):
        raise bad_request("the image must be in the first user message (the template puts it before the first "
                          "question)", images[0].param, "invalid_value")
    for role, text, index in turns:
        if role == "user" and not text.strip():
            raise bad_request("a user message has no text: ask a question", f"messages.{index}.content",
                              "invalid_value")
    pairs = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return turns[-1][1], pairs, (images[0] if images else None)


def _content(message: Message, param: str) -> tuple[str, list[ImageRef]]:
    content = message.content
    if content is None:
        raise bad_request("the message has no content", f"{param}.content", "invalid_value")
    if isinstance(content, str):
        texts, images = [content], []
    else:
        texts = [part.text for part in content if isinstance(part, TextPart)]
        images = [ImageRef(part.image_url.url, f"{param}.content.{i}.image_url")
                  for i, part in enumerate(content) if isinstance(part, ImagePart)]
    text = "\n".join(texts)
    for marker in (IMAGE_PLACEHOLDER, EOS_TEXT):
        if marker in text:
            raise bad_request(f"message text may not contain the model's special token {marker}",
                              f"{param}.content", "invalid_value")
    return text, images
