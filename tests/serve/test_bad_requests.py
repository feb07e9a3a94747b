"""Bad requests never hurt the server: each one gets a 4xx JSON error in OpenAI's shape that says what is wrong, and
the next request is answered as before. Every damaged input is made here (no fixture files)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.serve.helpers import get, openai_client, post, user

PROMPT = "What color is the square?"


def _png(width: int, height: int, noise: bool = False, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8) if noise \
        else np.full((height, width, 3), 200, np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def _url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _with_image(url: str, text: str = PROMPT) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": text},
                                                      {"type": "image_url", "image_url": {"url": url}}]}]}


def _cases():
    small = _png(16, 16)
    ok = {"role": "user", "content": PROMPT}
    return [
        # (id, body, status, code, words the message must contain)
        ("malformed-json", b'{"messages": [', 400, "invalid_json", "not valid JSON"),
        ("not-utf8", b'{"messages": "\xff"}', 400, "invalid_json", "not valid JSON"),
        ("json-array", b"[1, 2]", 400, "invalid_json", "JSON object"),
        ("missing-messages", {"model": "builtin-int4"}, 400, "missing_required_parameter", "messages"),
        ("messages-not-a-list", {"messages": "hi"}, 400, "invalid_type", "messages"),
        ("messages-empty", {"messages": []}, 400, None, "messages"),
        ("unknown-role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, None, "messages.0.role"),
        ("content-a-number", {"messages": [{"role": "user", "content": 42}]}, 400, None, "messages.0.content"),
        ("unknown-part", {"messages": [{"role": "user", "content": [{"type": "input_audio", "x": 1}]}]}, 400, None,
         "messages.0.content"),
        ("temperature-a-string", {"messages": [ok], "temperature": "0.5"}, 400, "invalid_type", "temperature"),
        ("temperature-too-high", {"messages": [ok], "temperature": 5}, 400, "invalid_value", "temperature"),
        ("top-p-zero", {"messages": [ok], "top_p": 0}, 400, "invalid_value", "top_p"),
        ("max-tokens-zero", {"messages": [ok], "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
        ("max-tokens-a-string", {"messages": [ok], "max_tokens": "10"}, 400, "invalid_type", "max_tokens"),
        ("stream-a-string", {"messages": [ok], "stream": "yes"}, 400, "invalid_type", "stream"),
        ("five-stops", {"messages": [ok], "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
        ("empty-stop", {"messages": [ok], "stop": ""}, 400, "invalid_value", "stop"),
        ("n-2", {"messages": [ok], "n": 2}, 400, "unsupported_parameter", "n=1"),
        ("tools", {"messages": [ok], "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
         "unsupported_parameter", "tool"),
        ("own-system-prompt", {"messages": [{"role": "system", "content": "You are a pirate."}, ok]}, 400,
         "unsupported_parameter", "system prompt"),
        ("two-user-turns", {"messages": [ok, ok]}, 400, "invalid_value", "alternate"),
        ("ends-on-assistant", {"messages": [ok, {"role": "assistant", "content": "red"}]}, 400, "invalid_value",
         "alternate"),
        ("empty-question", {"messages": [{"role": "user", "content": "   "}]}, 400, "invalid_value", "no text"),
        ("image-token-in-text", {"messages": [{"role": "user", "content": "<image> hi"}]}, 400, "invalid_value",
         "<image>"),
        ("lone-surrogate", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', 400, "invalid_value",
         "Unicode"),
        ("unknown-model", {"model": "gpt-4o", "messages": [ok]}, 404, "model_not_found", "gpt-4o"),
        ("prompt-over-context", {"messages": [{"role": "user", "content": "red square " * 400}]}, 400,
         "context_length_exceeded", "context"),
        ("bad-base64", _with_image("data:image/png;base64,@@@@"), 400, "invalid_image", "base64"),
        ("not-an-image", _with_image(_url(b"hello, this is text")), 400, "invalid_image", "cannot be decoded"),
        ("truncated-png", _with_image(_url(_png(64, 64, noise=True)[:3000])), 400, "invalid_image",
         "cannot be decoded"),
        ("gif-named-png", _with_image(_url(_png(16, 16, fmt="GIF"))), 400, "unsupported_image_type", "GIF"),
        ("gif-mime", _with_image(_url(small, "image/gif")), 400, "unsupported_image_type", "image/gif"),
        ("not-base64-data-url", _with_image("data:image/png,rawbytes"), 400, "invalid_image_url", "base64"),
        ("too-many-bytes", _with_image(_url(_png(300, 300, noise=True))), 413, "image_too_large",
         "--max-image-bytes"),
        ("too-many-pixels", _with_image(_url(_png(1001, 1000))), 400, "image_too_large", "--max-image-pixels"),
        ("remote-url", _with_image("http://127.0.0.1:9/cat.png"), 400, "remote_images_disabled",
         "--allow-remote-images"),
        ("local-path", _with_image("/etc/hostname"), 400, "invalid_image_url", "local paths"),
        ("file-url", _with_image("file:///etc/hostname"), 400, "invalid_image_url", "local paths"),
        ("two-images", {"messages": [{"role": "user", "content": [
            {"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": _url(small)}},
            {"type": "image_url", "image_url": {"url": _url(small)}}]}]}, 400, "too_many_images", "too many images"),
        ("image-from-assistant", {"messages": [ok, {"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": _url(small)}}]}, ok]}, 400, "invalid_value", "user message"),
        ("image-in-a-later-turn", {"messages": [ok, {"role": "assistant", "content": "red"},
                                                _with_image(_url(small))["messages"][0]]}, 400, "invalid_value",
         "first user message"),
        ("body-over-the-limit", b'{"messages": "' + b"x" * 1_400_000 + b'"}', 413, "request_too_large", "limit"),
    ]


@pytest.fixture(scope="module")
def good(bundle_server, pictures):
    """A good request and its answer, asked once before the bad ones."""
    request = {"messages": [user(PROMPT, pictures["scene0.png"])]}
    status, _, body = post(bundle_server.url + "/v1/chat/completions", request)
    assert status == 200
    return request, body["choices"][0]["message"]["content"]


@pytest.mark.parametrize("name, body, status, code, words", _cases(), ids=[c[0] for c in _cases()])
def test_bad_request_gets_an_openai_error_and_the_next_is_served(bundle_server, good, name, body, status, code,
                                                                  words):
    got, _, reply = post(bundle_server.url + "/v1/chat/completions", body)
    assert got == status, reply
    assert set(reply) == {"error"} and set(reply["error"]) == {"message", "type", "param", "code"}, reply
    assert reply["error"]["type"] == "invalid_request_error"
    if code is not None:
        assert reply["error"]["code"] == code, reply
    assert words in reply["error"]["message"] or words == reply["error"]["param"], reply
    request, answer = good
    after, _, body_after = post(bundle_server.url + "/v1/chat/completions", request)
    assert after == 200 and body_after["choices"][0]["message"]["content"] == answer


def test_unknown_route_and_method(bundle_server):
    status, _, body = get(bundle_server.url + "/v2/nothing")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, _, body = get(bundle_server.url + "/v1/chat/completions")
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"


def test_the_openai_client_shows_the_reason(bundle_server, pictures):
    import openai

    client = openai_client(bundle_server.url)
    two = user(PROMPT, pictures["scene0.png"])
    two["content"].append(dict(two["content"][1]))
    with pytest.raises(openai.BadRequestError, match="too many images"):
        client.chat.completions.create(model="builtin-int4", messages=[two])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="context"):  # streamed: refused before the stream starts
        client.chat.completions.create(model="builtin-int4", stream=True,
                                       messages=[{"role": "user", "content": "red square " * 400}])
