"""The model thread: one engine, one thread, a bounded queue of jobs, and the image-prefix cache.

Engines are not thread-safe, so every call into the model happens on the worker thread (or, for the live stream,
under the same lock: see ModelLock). The HTTP side puts a Job on a bounded queue (full: the request gets a 429) and
reads its events from an asyncio queue; the worker hands them over with `loop.call_soon_threadsafe`. A job whose
client went away or whose time ran out is cancelled: the worker skips it in the queue, or stops it between tokens.

Answers go through `engine.stream`, as `edge-vlm ask` does, so they are the same token for token. Prepared images
(vision features + the image prefix's KV cache) are kept in an LRU keyed by the sha256 of the image bytes and
bounded in bytes: two questions about one picture pay the vision tower and the prefix prefill once.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from edge_vlm.engine import GenerationConfig, fit_new_tokens
from edge_vlm.errors import EdgeVLMError
from edge_vlm.prompting import inference_prompt
from edge_vlm.serve import images
from edge_vlm.serve.errors import APIError, bad_request, timeout_error
from edge_vlm.serve.metrics import Metrics


class ModelLock:
    """The right to run the model. Requests go first: the live stream takes the model only while no request is
    waiting for it, so a busy stream cannot starve the API (it gets the model between requests)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._busy = False
        self._requests_waiting = 0

    @contextmanager
    def hold(self, request: bool = True):
        with self._cond:
            self._requests_waiting += request
            try:
                while self._busy or (not request and self._requests_waiting):
                    self._cond.wait()
            finally:
                self._requests_waiting -= request
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class CountingTokenizer:
    """The engine's tokenizer, counting the answer's tokens. The Engine protocol streams text, but `usage` needs the
    number of generated tokens: every engine turns its answer's ids into text with tokenizer.iter_text, which decodes
    all the ids generated so far (EOS excluded) at each new one, so the length of the last decode is that number, and
    the first decode is when the first token existed (the end of the prefill, even when the text of the first
    tokens is held back as an incomplete character)."""

    def __init__(self, inner):
        self._inner = inner
        self.reset()

    def reset(self) -> None:
        self.decoded = 0
        self.first_token_at: float | None = None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = list(ids)
        self.decoded = len(ids)
        if ids and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        return self._inner.decode(ids, skip_special_tokens=skip_special_tokens)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class PrefixCache:
    """Prepared images by image digest, least recently used first out, bounded in bytes. Entries bigger than the
    whole budget are not kept. Read from the event loop (is a digest cached?) and written by the worker: locked."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, digest: str) -> bool:
        with self._lock:
            return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str):
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            self._entries.move_to_end(digest)
            return entry[0]

    def put(self, digest: str, prepared) -> None:
        size = nbytes(prepared.features) + nbytes(prepared.prefix_cache)
        with self._lock:
            if digest in self._entries or size > self.max_bytes:
                return
            self._entries[digest] = (prepared, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted


_ORT_ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(bfloat16)": 2, "tensor(double)": 8}


def nbytes(value, _seen: set | None = None) -> int:
    """Bytes of the arrays inside a prepared image: numpy arrays, torch tensors, ONNX Runtime OrtValues (the bundle's
    KV cache), and containers or objects holding them (transformers' cache). Each array is counted once."""
    seen = set() if _seen is None else _seen
    if id(value) in seen or value is None or isinstance(value, (int, float, str, bytes, bool)):
        return 0
    seen.add(id(value))
    if hasattr(value, "nbytes") and hasattr(value, "dtype") and not callable(value.nbytes):
        return int(value.nbytes)  # numpy
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.numel() * value.element_size())  # torch
    if callable(getattr(value, "shape", None)) and callable(getattr(value, "data_type", None)):  # OrtValue
        count = 1
        for dim in value.shape():
            count *= int(dim)
        return count * _ORT_ITEMSIZE.get(value.data_type(), 4)
    if isinstance(value, dict):
        return sum(nbytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v, seen) for v in value)
    if hasattr(value, "values") and isinstance(value.values, list):  # the bundle's KVCache
        return nbytes(value.values, seen)  # its host arrays are the same memory as its OrtValues
    if hasattr(value, "__dict__"):
        return sum(nbytes(v, seen) for v in vars(value).values())
    return 0


class Cancelled(Exception):
    """The client went away: the job ends without an answer."""


@dataclass
class Job:
    """One request for the model. `deliver(kind, payload)` is called on the worker thread with ('delta', text),
    ('done', info) or ('error', APIError); it must not block."""

    question: str
    history: list[tuple[str, str]]
    image: images.ImageBlob | None
    config: GenerationConfig
    stop: list[str]
    deliver: Callable[[str, object], None]
    deadline: float  # time.monotonic() by which the answer must be complete
    timeout_s: float
    prompt_tokens: int = 0
    max_new_tokens: int = 0
    stream: bool = False  # deliver the text as it comes ('delta' events), not only with 'done'
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: APIError | None = None  # what the client is told when the server, not the client, ended the job

    def cancel(self, reason: APIError | None = None) -> None:
        self.reason = self.reason or reason
        self.cancelled.set()


class QueueFull(Exception):
    pass


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", code="shutting_down")


_STOP = object()


class ModelWorker:
    """Runs jobs one at a time on its own thread. See the module docstring."""

    def __init__(self, engine, max_queue: int = 16, cache_bytes: int = 1 << 30,
                 limits: images.ImageLimits | None = None, metrics: Metrics | None = None):
        self.engine = engine
        self.tokens = CountingTokenizer(engine.tokenizer)
        engine.tokenizer = self.tokens
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.cache = PrefixCache(cache_bytes)
        self.limits = limits or images.ImageLimits()
        self.lock = ModelLock()
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth.set_function(lambda: self.depth)
        self.busy = False
        self._current: Job | None = None
        self._thread = threading.Thread(target=self._loop, name="edge-vlm-model", daemon=True)
        self._closed = False

    def start(self) -> ModelWorker:
        self._thread.start()
        return self

    def warm_up(self) -> None:
        """One short answer about a blank picture, before the worker starts: ONNX Runtime and PyTorch allocate and
        tune on their first runs, which would otherwise land on the first client; and a model that cannot answer
        fails here, before the server says it is listening."""
        from PIL import Image

        prepared = self.engine.prepare_image(Image.new("RGB", (64, 64), (127, 127, 127)))
        for _ in self.engine.stream(prepared, "Hello", None, GenerationConfig(max_new_tokens=2)):
            pass

    @property
    def depth(self) -> int:
        """Jobs waiting (the one being answered is not counted)."""
        return self.queue.qsize()

    def prompt_length(self, question: str, history, has_image: bool, max_tokens: int) -> tuple[int, int]:
        """(prompt tokens, new tokens that fit), computed as the engines do, or a 400 when the prompt fills the
        context. Checked before queueing, so an over-long prompt never waits for the model."""
        try:
            prompt = inference_prompt(question, history, has_image=has_image)
            ids = self.tokens.encode_prompt(prompt, self.engine.num_image_tokens)
            return len(ids), fit_new_tokens(len(ids), self.engine.context_length, max_tokens)
        except EdgeVLMError as exc:
            raise bad_request(str(exc), "messages", "context_length_exceeded") from None

    def submit(self, job: Job) -> None:
        if self._closed:
            raise _shutting_down()
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    @property
    def closing(self) -> bool:
        return self._closed

    def begin_shutdown(self) -> None:
        """Refuse new jobs and end the others with a 503: the waiting ones now, the running one at its next token.
        Does not wait (it runs in the server's signal handler, so that open streams end before the server waits for
        them to close)."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            job.cancel()
            job.deliver("error", _shutting_down())
        running = self._current
        if running is not None:
            running.cancel(_shutting_down())
        try:
            self.queue.put_nowait(_STOP)
        except queue.Full:  # a request slipped in after the queue was emptied above: the worker stops after it
            self.queue.put(_STOP, timeout=1.0)

    def close(self, timeout_s: float = 10.0) -> None:
        """begin_shutdown, then wait for the worker thread."""
        self.begin_shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # ---- the worker thread ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is _STOP:
                return
            self.busy, self._current = True, job
            try:
                self._run(job)
            except Cancelled:
                self.metrics.outcome("cancelled")
            except APIError as exc:
                job.deliver("error", exc)
            except EdgeVLMError as exc:  # the engine refused this input
                job.deliver("error", bad_request(str(exc)))
            except Exception as exc:  # a bug: this request fails, the server goes on
                traceback.print_exc(file=sys.stderr)
                job.deliver("error", APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                                              code="internal_error"))
            finally:
                self.busy, self._current = False, None

    def _check(self, job: Job) -> None:
        if self._closed and not job.cancelled.is_set():  # taken from the queue just as the shutdown began
            job.cancel(_shutting_down())
        if job.cancelled.is_set():
            if job.reason is not None:
                raise job.reason
            raise Cancelled
        if time.monotonic() > job.deadline:
            job.cancel()
            self.metrics.outcome("timeout")
            raise timeout_error(job.timeout_s)

    def _run(self, job: Job) -> None:
        self._check(job)  # gave up or timed out while queued: skip it
        with self.lock.hold(request=True):
            started = time.monotonic()
            timings = {"queue_ms": (started - job.enqueued) * 1e3}
            prepared, cached = self._prepared(job, timings)
            self._check(job)
            text, finish, generation = self._generate(job, prepared)
        timings.update(generation)
        timings["total_ms"] = (time.monotonic() - job.enqueued) * 1e3
        info = {"finish_reason": finish, "prompt_tokens": job.prompt_tokens,
                "completion_tokens": self.tokens.decoded, "timings_ms": timings, "image_cached": cached,
                "had_image": job.image is not None, "text": text}
        decode_s = timings["decode_ms"] / 1e3
        info["tokens_per_s"] = (self.tokens.decoded - 1) / decode_s if self.tokens.decoded > 1 and decode_s else None
        self.metrics.answered(info)
        job.deliver("done", info)

    def _prepared(self, job: Job, timings: dict):
        """(the prepared image or None, whether it came from the cache)."""
        if job.image is None:
            return None, False
        prepared = self.cache.get(job.image.digest)
        if prepared is not None:
            timings.update(preprocess_ms=0.0, vision_ms=0.0, prefix_prefill_ms=0.0)
            return prepared, True
        picture = job.image.picture or images.decode(job.image.data, self.limits)
        prepared = self.engine.prepare_image(picture)
        timings.update({k: prepared.timings_ms.get(k, 0.0) for k in ("preprocess_ms", "vision_ms",
                                                                     "prefix_prefill_ms")})
        self.cache.put(job.image.digest, prepared)
        job.image.picture = None  # the cache keeps what the model needs; the pixels can go
        return prepared, False

    def _generate(self, job: Job, prepared) -> tuple[str, str, dict]:
        """Stream the answer to job.deliver; (text, finish reason, timings)."""
        shaper = TextShaper(job.stop)
        self.tokens.reset()
        start = time.monotonic()
        stopped = False
        pieces = self.engine.stream(prepared, job.question, job.history, job.config)
        try:
            for piece in pieces:
                text, stopped = shaper.push(piece)
                if text and job.stream:
                    job.deliver("delta", text)
                if stopped:
                    break
                self._check(job)
        finally:
            pieces.close()  # a stop sequence, a cancel or a timeout ends the engine's generation too
        if not stopped:
            tail = shaper.finish()
            if tail and job.stream:
                job.deliver("delta", tail)
        end = time.monotonic()
        first = self.tokens.first_token_at or end  # no token at all: EOS came first, the prefill was all
        finish = "stop" if stopped or self.tokens.decoded < job.max_new_tokens else "length"
        return shaper.text, finish, {"prefill_ms": (first - start) * 1e3, "decode_ms": (end - first) * 1e3}


class TextShaper:
    """Turns the engine's pieces into the content the client sees: without the space the template puts before
    every answer or trailing whitespace (as `edge-vlm ask` prints it, stripped), cut before the first stop sequence.
    Text that may be the start of a stop sequence, and trailing whitespace, are held back until the next piece."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""
        self.text = ""  # everything emitted so far
        self.started = False

    def push(self, piece: str) -> tuple[str, bool]:
        """(text to emit now, whether a stop sequence ended the answer)."""
        text = self.pending + piece
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            return self._emit(text[: min(hits)].rstrip(), ""), True
        # the longest end of the text that begins a stop sequence (k <= len(text): a stop sequence of a million
        # characters must not cost a million slices per token)
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])),
                   default=0)
        cut = min(len(text) - hold, len(text.rstrip()))
        return self._emit(text[:cut], text[cut:]), False

    def finish(self) -> str:
        return self._emit(self.pending.rstrip(), "")

    def _emit(self, out: str, pending: str) -> str:
        self.pending = pending
        self.text += out
        return out
