"""Hostile requests found by an independent sweep of `edge-vlm serve` (issue #17): each gets a 4xx in OpenAI's error
shape (or, where odd but valid, the right answer), never a 500, a hang or a traceback on stderr, and the next request
is answered as `edge-vlm ask` answers it. One real server (the built-in model, no export) for the whole module."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from edge_vlm.serve.protocol import HEAD_TIMEOUT_S
from tests.serve.helpers import Server, run_ask

KEY = "hostile-key"
TIMEOUT_S = 8.0  # --request-timeout: short, so that a body that never ends is cut off quickly
QUESTION = "What color is the square?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    served = Server("--api-key", KEY, "--request-timeout", str(TIMEOUT_S),
                    log=tmp_path_factory.mktemp("hostile") / "stderr.txt")
    yield served
    assert served.stop() == 0, served.stderr()
    assert "Traceback" not in served.stderr() and "Exception in ASGI" not in served.stderr(), served.stderr()


@pytest.fixture(scope="module")
def answer() -> str:
    """`edge-vlm ask`'s greedy answer to QUESTION, without an image."""
    return run_ask(QUESTION).strip()


def _address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _request(server, method: str, path: str, body: bytes | None = None, timeout: float = 60):
    connection = http.client.HTTPConnection(*_address(server), timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _chat(server, body: bytes):
    return _request(server, "POST", "/v1/chat/completions", body)


def _question(**extra) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": QUESTION}], **extra}).encode()


def _error(status: int, body: bytes) -> dict:
    """The error object of an OpenAI-shaped 4xx."""
    assert 400 <= status < 500, (status, body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


def _still_answers(server, answer: str) -> None:
    status, body = _chat(server, _question())
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == answer


SURROGATE = b"\\ud800"  # as JSON spells it: a lone surrogate, which no UTF-8 text can hold
BAD_BODIES = [
    # (id, body, status, code, words in the message or the param)
    ("integer-of-5000-digits", _question()[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}", 400, "invalid_json",
     "4300 digits"),
    ("nested-100k-arrays", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json", "nested too deeply"),
    ("nested-objects-in-an-extra-field", _question()[:-1] + b', "x": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
     400, "invalid_json", "nested too deeply"),
    ("nested-lists-as-content", b'{"messages": [{"role": "user", "content": ' + b"[" * 50_000 + b"]" * 50_000
     + b"}]}", 400, "invalid_json", "nested too deeply"),
    ("utf-16-body", _question().decode().encode("utf-16"), 400, "invalid_json", "not UTF-8"),
    ("utf-8-encoded-surrogate", b'{"messages": [{"role": "user", "content": "hi \xed\xa0\x80"}]}', 400,
     "invalid_json", "not UTF-8"),
    ("surrogate-in-stop", _question()[:-1] + b', "stop": "' + SURROGATE + b'"}', 400, "invalid_value", "stop"),
    ("surrogate-in-a-stop-list", _question()[:-1] + b', "stop": ["a", "' + SURROGATE + b'"]}', 400,
     "invalid_value", "stop.1"),
    ("surrogate-in-model", _question()[:-1] + b', "model": "' + SURROGATE + b'"}', 400, "invalid_value", "model"),
    ("surrogate-in-a-text-part", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi '
     + SURROGATE + b'"}]}]}', 400, "invalid_value", "messages.0.content.0.text"),
    ("seed-negative", _question(seed=-1, temperature=1.0), 400, "invalid_value", "seed"),
    ("seed-2**32", _question(seed=2**32, temperature=1.0), 400, "invalid_value", "seed"),
    ("seed-2**70", _question(seed=2**70), 400, "invalid_value", "seed"),
    ("seed-min-int64", _question(seed=-2**63), 400, "invalid_value", "seed"),
]


@pytest.mark.parametrize("name, body, status, code, words", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_body_gets_a_4xx_and_the_next_request_is_answered(server, answer, name, body, status, code, words):
    got, reply = _chat(server, body)
    error = _error(got, reply)
    assert got == status and error["code"] == code, reply
    assert words in error["message"] or words == error["param"], reply
    _still_answers(server, answer)


def test_a_leading_utf8_bom_is_ignored(server, answer):
    status, body = _chat(server, b"\xef\xbb\xbf" + _question())
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == answer, body


@pytest.mark.parametrize("temperature", [5e-324, 1e-320])
def test_a_vanishing_temperature_is_greedy(server, answer, temperature):
    """logits / 5e-324 overflows to inf and the softmax to NaN; such a temperature is greedy decoding in effect."""
    status, body = _chat(server, _question(temperature=temperature, seed=3))
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == answer, body


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_trailing_slash_is_no_route(server, method):
    status, body = _request(server, method, "/v1/chat/completions/", _question() if method == "POST" else None)
    assert status == 404 and _error(status, body)["code"] == "not_found"


def _raw(server, data: bytes, wait: float) -> tuple[bytes, bytes]:
    """Send `data` on a fresh connection; the head and body of the response (b"" if none came in `wait` s)."""
    with socket.create_connection(_address(server), timeout=wait) as sock:
        sock.sendall(data)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
                head, _, body = got.partition(b"\r\n\r\n")
                length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
                if length and len(body) >= int(length[0].split(b":")[1]):
                    return head, body
        except TimeoutError:
            pass
    return got, b""


def _head(extra: str) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


@pytest.mark.parametrize("name, data", [
    ("content-length-lie", _head("Content-Length: 5000\r\n") + _question()),
    ("chunked-body-that-never-ends", _head("Transfer-Encoding: chunked\r\n") + b"%x\r\n" % len(_question())
     + _question() + b"\r\n"),
])
def test_a_body_that_never_ends_gets_a_408_in_time(server, answer, name, data):
    started = time.monotonic()
    head, body = _raw(server, data, wait=TIMEOUT_S + 10)
    assert time.monotonic() - started < TIMEOUT_S + 5 and head.startswith(b"HTTP/1.1 408 "), head
    assert _error(408, body)["code"] == "request_timeout" and b"connection: close" in head.lower(), head
    _still_answers(server, answer)


def test_clients_that_hang_up_mid_request_leave_no_trace(server, answer):
    body = _question()

    def half_request(index: int) -> None:
        with socket.create_connection(_address(server), timeout=10) as sock:
            sock.sendall(_head(f"Content-Length: {len(body)}\r\n") + body[: len(body) // (2 + index % 3)])

    threads = [threading.Thread(target=half_request, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.5)  # the server notices the hang-ups
    _still_answers(server, answer)
    assert "Traceback" not in server.stderr(), server.stderr()


def test_a_stop_sequence_of_a_million_characters_costs_no_time(server, answer):
    """The text held back in case it starts a stop sequence was looked for with a slice per character of every stop
    sequence, per token: one such request held the model for seconds."""
    started = time.monotonic()
    status, body = _chat(server, _question(stop="x" * 1_000_000))
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == answer, body
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(50),  # TLS to plain HTTP
                                  b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
                                  _head("Transfer-Encoding: chunked\r\n") + b"zz\r\n{}\r\n0\r\n\r\n"],
                         ids=["tls-hello", "header-without-colon", "bad-chunk-size"])
def test_malformed_http_gets_an_openai_error(server, answer, data):
    head, body = _raw(server, data, wait=10)
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert _error(400, body)["code"] == "invalid_http"
    _still_answers(server, answer)


def test_a_request_head_that_trickles_in_is_cut_off(server, answer):
    """uvicorn waits for a request's head without end: slow clients could hold every connection."""
    started = time.monotonic()
    with socket.create_connection(_address(server), timeout=HEAD_TIMEOUT_S + 10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.monotonic() - started < HEAD_TIMEOUT_S + 10:
                sock.sendall(b"X-A: b\r\n")
                time.sleep(0.5)
        except OSError:  # the server closed the connection (a broken pipe or a reset)
            pass
    assert time.monotonic() - started < HEAD_TIMEOUT_S + 3
    _still_answers(server, answer)
