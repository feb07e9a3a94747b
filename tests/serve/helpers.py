"""Helpers of the serve tests: the built-in model's INT4 bundle (exported once per session), real `edge-vlm serve`
processes on free ports, `edge-vlm ask` answers to compare with, and request builders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BUILTIN = Path(__file__).resolve().parents[2] / "edge_vlm" / "assets" / "builtin"
_CACHE: dict[str, Path] = {}


def builtin_int4(base: Path) -> Path:
    """The built-in model exported to INT4, as `edge-vlm export --int4` writes it. The gate runs on 4 samples only
    (its statistics are not what these tests are about) and may flag the bundle degraded; the weights are the same."""
    if "int4" not in _CACHE:
        from edge_vlm.export.pipeline import ExportOptions, export_bundle

        out = base / "builtin-int4"
        export_bundle(ExportOptions(model=BUILTIN, out=out, precision="int4", val_samples=4, val_max_new_tokens=6,
                                    allow_degraded=True), log=lambda _: None)
        _CACHE["int4"] = out
    return _CACHE["int4"]


def run_ask(*args: str, stdin: str | None = None, timeout: float = 300) -> str:
    """`edge-vlm ask ARGS` in a fresh process; its stdout (one answer per line)."""
    result = subprocess.run([sys.executable, "-m", "edge_vlm.cli.main", "ask", *map(str, args)], input=stdin,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


class Server:
    """`edge-vlm serve ARGS --port 0` in its own process; `url` once /health answers."""

    def __init__(self, *args: str, log: Path, env: dict | None = None):
        self.log = log
        self.args = [str(a) for a in args]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_vlm.cli.main", "serve", *self.args, "--port", "0"],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env={**os.environ, **(env or {})})  # noqa: SIM115
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 180) -> str:
        import urllib.request

        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"edge-vlm serve exited {self.process.returncode}:\n{self.stderr()}")
            if url is None:
                for line in self.stderr().splitlines():
                    if " on http://" in line:
                        url = line.split(" on ")[1].split()[0]
            if url is not None:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=5) as response:
                        if response.status == 200:
                            return url
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"edge-vlm serve did not come up in {timeout} s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def data_url(path: Path) -> str:
    import base64

    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def user(text: str, image: Path | None = None) -> dict:
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"role": "user", "content": content}


def openai_client(url: str, key: str = "none"):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


class FakeEngine:
    """The Engine protocol with a fixed answer of `tokens` words (at most max_new_tokens), one every `token_s` seconds: tests the server's queue,
    timeouts and cancellation, not a model. Uses the built-in model's tokenizer, so prompts are counted for real.
    `produced` counts the ids generated, `closed` is set when the server stops reading an answer."""

    num_image_tokens = 36
    context_length = 512

    def __init__(self, token_s: float = 0.0, tokens: int = 3):
        import threading

        from edge_vlm.tokenizer import TextTokenizer

        self.tokenizer = TextTokenizer.from_dir(BUILTIN)
        self.token_s = token_s
        self.tokens = tokens
        self.produced = 0
        self.stream_calls = 0
        self.started = threading.Event()
        self.closed = threading.Event()
        self.word = self.tokenizer.encode(" yes")
        assert len(self.word) == 1  # one token per word, so tokens and words count alike

    def prepare_image(self, image):
        import numpy as np

        from edge_vlm.engine import IMAGE_PREFIX, PreparedImage

        ids = self.tokenizer.encode_prompt(IMAGE_PREFIX, self.num_image_tokens)
        return PreparedImage(features=np.zeros((36, 8), np.float32), prefix_cache=None, prefix_ids=ids)

    def stream(self, prepared, question, history=None, config=None):
        from edge_vlm.tokenizer import iter_text

        self.stream_calls += 1

        count = min(self.tokens, config.max_new_tokens if config is not None else self.tokens)

        def ids():
            for _ in range(count):
                self.started.set()
                time.sleep(self.token_s)
                self.produced += 1
                yield from self.word

        try:
            yield from iter_text(self.tokenizer, ids())
        finally:
            self.closed.set()


class InProcessServer:
    """create_app + uvicorn on a thread, on a free port: for the tests that need a fake engine."""

    def __init__(self, engine, max_queue: int = 16, timeout_s: float = 120.0, api_key: str | None = None,
                 cors: tuple[str, ...] = (), limits=None):
        import threading

        import uvicorn

        from edge_vlm.cli.serve import listen
        from edge_vlm.serve.app import Server, Settings, create_app
        from edge_vlm.serve.images import ImageLimits
        from edge_vlm.serve.worker import ModelWorker

        limits = limits or ImageLimits()
        self.worker = ModelWorker(engine, max_queue=max_queue, limits=limits).start()
        settings = Settings(model_id="fake", api_key=api_key, request_timeout_s=timeout_s, cors_origins=list(cors),
                            limits=limits)
        sock = listen("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = Server(uvicorn.Config(create_app(self.worker, settings), http="h11", lifespan="off",
                                            log_level="warning", timeout_graceful_shutdown=1), self.worker)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.worker.close()


def post(url: str, body, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, dict]:
    """POST raw bytes (or JSON for anything else) with http.client: (status, headers, parsed JSON body)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", parts.path, body=data, headers={"Content-Type": "application/json",
                                                                   **(headers or {})})
        response = connection.getresponse()
        raw = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw) if raw else {}
    finally:
        connection.close()


def get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, parts.path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()
