"""The model queue over real HTTP (uvicorn on a thread, a fake engine of known speed): 429 when full, per-request
timeouts, cancellation when the client goes away, the API key, CORS; and the worker's parts (the text shaper, the
prefix cache, the model lock) on hand-made cases."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from tests.serve.helpers import FakeEngine, InProcessServer, get, post

QUESTION = {"messages": [{"role": "user", "content": "Say yes."}]}


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _in_thread(function, *args):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function(*args)), daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def slow_server():
    servers = []

    def make(engine, **options):
        servers.append(InProcessServer(engine, **options))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_a_full_queue_answers_429_in_openai_shape(slow_server):
    engine = FakeEngine(token_s=0.05, tokens=12)
    server = slow_server(engine, max_queue=1)
    url = server.url + "/v1/chat/completions"
    first, first_result = _in_thread(post, url, QUESTION)
    _wait(lambda: server.worker.busy)
    second, second_result = _in_thread(post, url, QUESTION)
    _wait(lambda: server.worker.depth == 1)
    status, headers, body = post(url, QUESTION)
    assert status == 429
    assert headers["retry-after"] == "1"
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "queue_full"
    assert "--max-queue" in body["error"]["message"]
    for thread in (first, second):
        thread.join(30)
    assert first_result["value"][0] == second_result["value"][0] == 200
    assert first_result["value"][2]["choices"][0]["message"]["content"] == "yes " * 11 + "yes"


def _send_and_hang_up(url: str, body: bytes, engine: FakeEngine, read_first: bool = False) -> None:
    """Send a request on a raw socket, wait until the model works on it, then close the connection."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    engine.started.wait(10)
    if read_first:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_frees_the_model(slow_server, stream):
    import json

    engine = FakeEngine(token_s=0.05, tokens=400)  # 20 s if nobody stopped it
    server = slow_server(engine)
    body = json.dumps({**QUESTION, "stream": stream}).encode()
    _send_and_hang_up(server.url, body, engine, read_first=stream)
    assert engine.closed.wait(5), "the answer went on after the client left"
    assert engine.produced < 100
    status, _, reply = post(server.url + "/v1/chat/completions", {**QUESTION, "max_tokens": 2})
    assert status == 200 and reply["choices"][0]["finish_reason"] == "length"


def test_a_queued_request_whose_client_left_never_runs(slow_server):
    import json

    engine = FakeEngine(token_s=0.05, tokens=20)  # 1 s
    server = slow_server(engine)
    first, result = _in_thread(post, server.url + "/v1/chat/completions", QUESTION)
    _wait(lambda: server.worker.busy)
    from urllib.parse import urlsplit

    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, parts.port))
    body = json.dumps(QUESTION).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    _wait(lambda: server.worker.depth == 1)
    sock.close()
    first.join(30)
    assert result["value"][0] == 200
    _wait(lambda: server.worker.depth == 0 and not server.worker.busy)
    assert engine.stream_calls == 1


def test_a_request_over_its_time_gets_504_and_stops(slow_server):
    engine = FakeEngine(token_s=0.05, tokens=400)
    server = slow_server(engine, timeout_s=0.5)
    started = time.monotonic()
    status, _, body = post(server.url + "/v1/chat/completions", QUESTION)
    assert status == 504 and body["error"]["code"] == "timeout" and "--request-timeout" in body["error"]["message"]
    assert time.monotonic() - started < 3
    assert engine.closed.wait(5) and engine.produced < 40


def test_stopping_the_server_ends_running_and_waiting_requests_with_503(slow_server):
    import json
    import signal
    import urllib.request

    engine = FakeEngine(token_s=0.05, tokens=400)
    server = slow_server(engine)
    request = urllib.request.Request(server.url + "/v1/chat/completions", method="POST",
                                     data=json.dumps({**QUESTION, "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=30) as stream:
        assert json.loads(stream.readline().decode().removeprefix("data: "))["choices"][0]["delta"]["role"]
        assert engine.started.wait(10)  # the answer is being generated
        waiting, result = _in_thread(post, server.url + "/v1/chat/completions", QUESTION)
        _wait(lambda: server.worker.depth == 1)
        server.server.handle_exit(signal.SIGINT, None)  # what Ctrl-C does
        events = [line.decode().removeprefix("data: ").strip() for line in stream if line.strip()]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "shutting_down"
    waiting.join(10)
    status, _, body = result["value"]
    assert status == 503 and body["error"]["code"] == "shutting_down"
    assert engine.closed.wait(5) and engine.produced < 100


def test_the_api_key_is_checked_on_the_api_not_on_the_page(slow_server):
    server = slow_server(FakeEngine(), api_key="s3cret")
    url = server.url + "/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                    {"Authorization": "Basic s3cret"}):
        status, response_headers, body = post(url, QUESTION, headers)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", headers
        assert response_headers["www-authenticate"] == "Bearer"
    assert post(url, QUESTION, {"Authorization": "Bearer s3cret"})[0] == 200
    assert get(server.url + "/v1/models")[0] == 401
    assert get(server.url + "/metrics")[0] == 401
    assert get(server.url + "/v1/models", {"Authorization": "Bearer s3cret"})[0] == 200
    assert get(server.url + "/health")[0] == 200
    assert get(server.url + "/")[0] == 200


def test_cors_is_off_unless_asked(slow_server):
    preflight = {"Origin": "http://robot.local", "Access-Control-Request-Method": "POST"}
    closed = slow_server(FakeEngine())
    status, headers, _ = get(closed.url + "/v1/chat/completions", preflight, method="OPTIONS")
    assert "access-control-allow-origin" not in headers
    opened = slow_server(FakeEngine(), cors=("http://robot.local",))
    status, headers, _ = get(opened.url + "/v1/chat/completions", preflight, method="OPTIONS")
    assert status == 200 and headers["access-control-allow-origin"] == "http://robot.local"
    _, headers, _ = get(opened.url + "/v1/chat/completions", {"Origin": "http://elsewhere"}, method="OPTIONS")
    assert headers.get("access-control-allow-origin") != "http://elsewhere"


def test_remote_images_are_fetched_only_when_allowed(slow_server, pictures, tmp_path):
    import functools
    import http.server

    from edge_vlm.serve.images import ImageLimits

    (tmp_path / "big.png").write_bytes(b"\x89PNG" + b"\0" * 5000)
    (tmp_path / "ok.png").write_bytes(pictures["scene0.png"].read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    images_host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=images_host.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{images_host.server_address[1]}"
    try:
        server = slow_server(FakeEngine(), limits=ImageLimits(max_bytes=4000, allow_remote=True))

        def ask(url):
            return post(server.url + "/v1/chat/completions", {"messages": [{"role": "user", "content": [
                {"type": "text", "text": "Say yes."}, {"type": "image_url", "image_url": {"url": url}}]}]})

        status, _, body = ask(base + "/ok.png")
        assert status == 200 and body["choices"][0]["message"]["content"] == "yes yes yes"
        status, _, body = ask(base + "/big.png")
        assert status == 413 and body["error"]["code"] == "image_too_large"
        status, _, body = ask(base + "/missing.png")
        assert status == 400 and body["error"]["code"] == "image_fetch_failed" and "404" in body["error"]["message"]
    finally:
        images_host.shutdown()


# ---- the worker's parts -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stops, pieces, emitted, stopped", [
    ([], [" The", " red", " square", " "], ["The", " red", " square", ""], False),  # leading / trailing space dropped
    (["."], [" red", ".", " Next"], ["red", ""], True),
    (["###"], [" a", "#", "#", "b"], ["a", "", "", "##b"], False),  # a partial stop held back, then released
    (["###"], [" a", "##", "#", " z"], ["a", "", ""], True),  # a stop split over pieces
    (["\n"], ["  \n", "x\ny"], ["", "x"], True),  # the answer's leading whitespace is not the stop
])
def test_text_shaper(stops, pieces, emitted, stopped):
    from edge_vlm.serve.worker import TextShaper

    shaper = TextShaper(stops)
    out, hit = [], False
    for piece in pieces:
        text, hit = shaper.push(piece)
        out.append(text)
        if hit:
            break
    if not hit:
        out[-1] += shaper.finish()
    assert (out, hit) == (emitted, stopped)
    assert shaper.text == "".join(emitted)


def test_prefix_cache_is_bounded_in_bytes_and_least_recently_used_goes_first():
    from edge_vlm.engine import PreparedImage
    from edge_vlm.serve.worker import PrefixCache

    def prepared(kib: int):  # features of `kib` KiB, a KV cache of two arrays of 1 KiB
        return PreparedImage(np.zeros(kib * 256, np.float32), [np.zeros(256, np.float32)] * 2 + [np.zeros(128,
                                                                                                          np.float64)],
                             [1])

    cache = PrefixCache(max_bytes=10 * 1024)
    cache.put("a", prepared(3))  # 3 KiB + 1 KiB (the same array twice counts once) + 1 KiB = 5 KiB
    assert cache.bytes == 5 * 1024
    cache.put("b", prepared(3))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", prepared(3))  # 15 KiB > 10 KiB: b goes
    assert "a" in cache and "c" in cache and "b" not in cache and cache.bytes == 10 * 1024
    cache.put("huge", prepared(20))  # larger than the whole budget: not kept, nothing evicted
    assert "huge" not in cache and len(cache) == 2


def test_requests_take_the_model_before_the_live_stream():
    from edge_vlm.serve.worker import ModelLock

    lock = ModelLock()
    order = []
    holding = threading.Event()
    release = threading.Event()

    def hold_first():
        with lock.hold(request=True):
            holding.set()
            release.wait(5)

    def take(name, request):
        with lock.hold(request=request):
            order.append(name)

    first = threading.Thread(target=hold_first)
    first.start()
    holding.wait(5)
    stream = threading.Thread(target=take, args=("stream", False))
    stream.start()
    time.sleep(0.1)  # the stream waits first...
    request = threading.Thread(target=take, args=("request", True))
    request.start()
    _wait(lambda: lock._requests_waiting == 1)  # the request is waiting too
    release.set()
    for thread in (first, stream, request):
        thread.join(5)
    assert order == ["request", "stream"]  # ...but the request goes first
