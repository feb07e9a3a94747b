"""The latest-frame loop: newest frame -> prepare once -> every prompt -> timed results, at `max_hz` or flat out.

    from edge_vlm.stream import StreamRunner, open_source

    with open_source("synthetic:30") as source:
        runner = StreamRunner(engine, source, ["What is moving?"], max_hz=2)
        for result in runner.results():          # iterator form (runs in this thread)
            print(result.text, result.frame_age_ms)

    runner = StreamRunner(engine, source, prompts, on_result=publish, on_partial=show)
    runner.start(); ...; runner.stop(); runner.join()   # callback form (a worker thread)

Frames are never queued: each inference takes the newest unread frame from the source (see source.py), so a
slow model answers about *now* and the frames it skipped are counted. Several prompts about one frame share one
`prepare_image` (vision features + the KV cache of the image prefix). One-shot questions (`ask`) from other
threads are answered on the next frame, ahead of the standing prompts.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field

from edge_vlm.engine import GenerationConfig, check_question, fit_new_tokens
from edge_vlm.errors import EdgeVLMError
from edge_vlm.prompting import inference_prompt
from edge_vlm.stream.source import EndOfStream, Frame, FrameSource, check_positive
from edge_vlm.stream.stats import RunStats

# How long the loop blocks on the source before it looks at stop / duration again.
_POLL_S = 0.1


@dataclass
class StreamResult:
    """One answer about one frame. Times `*_at` are wall-clock seconds (unix); durations are milliseconds."""

    frame_seq: int  # the frame's index in its source (every captured frame counts)
    prompt_index: int  # position in the standing prompts; -1 for a one-shot question
    prompt: str
    text: str
    stamp_ns: int  # the source's stamp (ROS header stamp, video position, or capture wall time)
    frame_id: str
    captured_at: float
    inference_start_at: float  # prepare_image of this frame began
    prompt_start_at: float  # decoding of this prompt began
    first_token_at: float | None
    completed_at: float
    frame_age_ms: float  # completed - captured: how old the frame was when the answer existed
    start_age_ms: float  # inference start - captured: how stale the frame was when the model took it
    prepare_ms: float  # vision + image-prefix prefill (once per frame, shared by its prompts)
    first_token_ms: float | None  # first_token - prompt_start
    total_ms: float  # completed - inference start
    frames_dropped: int  # frames captured since the previous answered frame that were never answered
    frames_captured: int  # frames the source had captured when this answer completed
    source_errors: int  # failed grabs so far (retried)
    one_shot: bool = False
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PartialText:
    """A piece of an answer as it is decoded (for live display / ROS partial topic)."""

    frame_seq: int
    prompt_index: int
    prompt: str
    piece: str
    text: str  # the answer so far
    one_shot: bool = False
    stamp_ns: int = 0  # the frame's source stamp


class StreamRunner:
    """Runs an Engine over a FrameSource. See the module docstring for the two forms."""

    def __init__(self, engine, source: FrameSource, prompts: list[str] | tuple[str, ...] = (), *,
                 max_hz: float | None = None, max_age_ms: float | None = None,
                 generation: GenerationConfig | None = None, max_frames: int | None = None,
                 duration_s: float | None = None,
                 on_result: Callable[[StreamResult], None] | None = None,
                 on_partial: Callable[[PartialText], None] | None = None):
        if max_hz is not None:
            max_hz = check_positive(max_hz, "max_hz (unset: as fast as possible)")
        if max_age_ms is not None:
            max_age_ms = check_positive(max_age_ms, "max_age_ms")
        if max_frames is not None and max_frames < 1:
            raise EdgeVLMError(f"max_frames must be >= 1, got {max_frames}")
        if duration_s is not None:
            duration_s = check_positive(duration_s, "duration (seconds)")
        self.engine = engine
        self.source = source
        self.max_hz = max_hz
        self.max_age_ms = max_age_ms
        self.generation = generation or GenerationConfig(max_new_tokens=32)
        self.max_frames = max_frames
        self.duration_s = duration_s
        self.on_result = on_result
        self.on_partial = on_partial
        self._prompts = self._check_prompts(prompts)
        self._prompts_lock = threading.Lock()
        self._questions: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.stats = RunStats()
        self.frames_answered = 0
        self.source_stats_at_end: dict | None = None
        self.interrupted_answers = 0
        self.started_mono: float | None = None
        self.finished_mono: float | None = None
        self.stop_reason = ""
        self._last_seq = -1
        self._last_frame: Frame | None = None
        self._last_prepared = None

    def _check_prompts(self, prompts) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        cleaned = [str(p) for p in prompts]
        for prompt in cleaned:
            check_question(prompt, "a prompt")  # empty, or not UTF-8 (see check_question)
            self._check_fits(prompt)
        return cleaned

    def _check_fits(self, prompt: str) -> None:
        """A prompt too long for the model's context is refused now, before the loop starts (or the question is
        queued), not at the first frame. Engines without a tokenizer and context length (test doubles) are not
        checked."""
        engine = self.engine
        tokenizer = getattr(engine, "tokenizer", None)
        image_tokens = getattr(engine, "num_image_tokens", None)
        context = getattr(engine, "context_length", None)
        if tokenizer is None or not isinstance(image_tokens, int) or not isinstance(context, int):
            return
        ids = tokenizer.encode_prompt(inference_prompt(prompt, None, has_image=True), image_tokens)
        fit_new_tokens(len(ids), context, self.generation.max_new_tokens)

    # ---- control, from any thread -------------------------------------------------------------------------------
    @property
    def prompts(self) -> list[str]:
        with self._prompts_lock:
            return list(self._prompts)

    def set_prompts(self, prompts) -> None:
        """Replace the standing prompts (takes effect on the next frame). An empty list pauses the loop until a
        one-shot question arrives."""
        checked = self._check_prompts(prompts)
        with self._prompts_lock:
            self._prompts = checked

    def ask(self, question: str, timeout_s: float | None = None) -> StreamResult:
        """Answer one question about the next frame (from another thread while the loop runs). Raises
        TimeoutError after `timeout_s`, or EdgeVLMError when the loop stopped first."""
        return self.submit(question).result(timeout=timeout_s)

    def submit(self, question: str) -> Future:
        """Queue a one-shot question; the Future resolves to its StreamResult."""
        self._check_prompts([question])
        future: Future = Future()
        if self._stop.is_set():
            future.set_exception(EdgeVLMError("the stream is stopped"))
        else:
            self._questions.put((question, future))
        return future

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to end: the answer being decoded is abandoned, outputs of finished answers stay."""
        if not self._stop.is_set():
            self.stop_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ---- the three forms ------------------------------------------------------------------------------------------
    def events(self) -> Iterator[StreamResult | PartialText]:
        """Results and partial texts, in order, running the loop in the calling thread."""
        opened_here = not self.source.is_open
        if opened_here:
            self.source.open()
        self.started_mono = time.monotonic()
        try:
            yield from self._loop()
        except GeneratorExit:  # the caller stopped reading
            raise
        except BaseException as exc:  # the summary says why the run ended; the caller gets the error itself
            if not self.stop_reason:
                self.stop_reason = self._reason(exc)
            raise
        finally:
            self.finished_mono = time.monotonic()
            self.source_stats_at_end = self.source.stats.as_dict()
            self._stop.set()
            self._fail_pending(EdgeVLMError(f"the stream ended ({self.stop_reason or 'finished'})"))
            if opened_here:
                self.source.close()

    @staticmethod
    def _reason(exc: BaseException) -> str:
        if isinstance(exc, KeyboardInterrupt):
            return "interrupted"
        return str(exc) if isinstance(exc, EdgeVLMError) else f"{type(exc).__name__}: {exc}"

    def results(self) -> Iterator[StreamResult]:
        """Only the finished answers (partial text, if wanted, goes to `on_partial`)."""
        for event in self.events():
            if isinstance(event, StreamResult):
                yield event
            elif self.on_partial is not None:
                self.on_partial(event)

    def run(self) -> None:
        """Run to the end in this thread, delivering through `on_result` / `on_partial`."""
        for event in self.events():
            if isinstance(event, StreamResult):
                if self.on_result is not None:
                    self.on_result(event)
            elif self.on_partial is not None:
                self.on_partial(event)

    def start(self) -> threading.Thread:
        """Run in a background thread (callback form); `join()` re-raises what ended it."""

        def work():
            try:
                self.run()
            except BaseException as exc:  # handed to join()
                self._error = exc

        self._thread = threading.Thread(target=work, name="edge-vlm-stream", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def summary(self, extra: dict | None = None) -> dict:
        """The run's figures so far (answers/s, frame age p50/p95, drop rate...): see stats.RunStats."""
        source_stats = self.source_stats_at_end or self.source.stats.as_dict()
        return self.stats.summary(source_stats, self.elapsed_s(),
                                  {"interrupted_answers": self.interrupted_answers, "stop_reason": self.stop_reason,
                                   **(extra or {})})

    # ---- the loop -------------------------------------------------------------------------------------------------
    def elapsed_s(self) -> float:
        if self.started_mono is None:
            return 0.0
        return (self.finished_mono or time.monotonic()) - self.started_mono

    def _fail_pending(self, error: BaseException) -> None:
        while True:
            try:
                _, future = self._questions.get_nowait()
            except queue.Empty:
                return
            if not future.done():
                future.set_exception(error)

    def _pending_questions(self) -> list[tuple[str, Future]]:
        pending = []
        while True:
            try:
                pending.append(self._questions.get_nowait())
            except queue.Empty:
                return pending

    def _should_end(self) -> bool:
        if self._stop.is_set():
            return True
        if self.duration_s is not None and self.elapsed_s() >= self.duration_s:
            self.stop("duration reached")
            return True
        if self.max_frames is not None and self.frames_answered >= self.max_frames:
            self.stop("max frames reached")
            return True
        return False

    def _abandon(self, future: Future | None) -> None:
        """An answer not given because the loop is stopping."""
        self.interrupted_answers += 1
        if future is not None and not future.done():
            future.set_exception(EdgeVLMError(f"the stream stopped ({self.stop_reason})"))

    def _reusable(self) -> bool:
        """Whether the last answered frame may serve a one-shot question (no newer frame has come)."""
        last = self._last_frame
        return last is not None and (self.max_age_ms is None or last.age_ms() <= self.max_age_ms)

    def _loop(self) -> Iterator[StreamResult | PartialText]:
        next_start = time.monotonic()
        questions: list[tuple[str, Future]] = []
        while not self._should_end():
            questions += self._pending_questions()
            prompts = self.prompts
            if not prompts and not questions:  # paused: wait for a one-shot question
                try:
                    questions.append(self._questions.get(timeout=_POLL_S))
                except queue.Empty:
                    pass
                continue
            now = time.monotonic()
            due = bool(prompts) and (self.max_hz is None or now >= next_start)
            if not due and not questions:  # rate limit: one-shot questions do not wait for it
                self._stop.wait(min(next_start - now, _POLL_S))
                continue
            # a one-shot question takes a newer frame if there is one, else the last frame's prepared image
            reuse = bool(questions) and self._reusable()
            try:
                frame = self.source.read_latest(self.max_age_ms, timeout_s=0.0 if reuse else _POLL_S)
            except EndOfStream:
                if reuse:
                    yield from self._answer_frame(self._last_frame, time.monotonic(), questions, [],
                                                  reuse=True)
                self.stop_reason = self.stop_reason or "end of stream"
                break
            if frame is None:
                if reuse:
                    yield from self._answer_frame(self._last_frame, time.monotonic(), questions, [], reuse=True)
                    questions = []
                continue
            started = time.monotonic()
            if due and self.max_hz is not None:
                next_start = max(next_start + 1.0 / self.max_hz, started)  # keeps the average, no burst after a stall
            yield from self._answer_frame(frame, started, questions, prompts if due else [])
            questions = []

    def _answer_frame(self, frame: Frame, started: float, questions, prompts,
                      reuse: bool = False) -> Iterator[StreamResult | PartialText]:
        if reuse:  # the last frame again: its vision features and prefix cache are kept
            prepared, prepare_ms, dropped = self._last_prepared, 0.0, 0
        else:
            prepared = self.engine.prepare_image(frame.image)
            prepare_ms = (time.monotonic() - started) * 1e3
            dropped = frame.seq - self._last_seq - 1
            self._last_seq = frame.seq
            self._last_frame, self._last_prepared = frame, prepared
            self.frames_answered += 1
        work = [(q, -1, future) for q, future in questions] + [(p, i, None) for i, p in enumerate(prompts)]
        for position, (prompt, index, future) in enumerate(work):
            if self._stop.is_set():
                self._abandon(future)
                continue
            prompt_start = time.monotonic()
            first_token = None
            pieces: list[str] = []
            generator = self.engine.stream(prepared, prompt, None, self.generation)
            try:
                for piece in generator:
                    if first_token is None and piece:
                        first_token = time.monotonic()
                    pieces.append(piece)
                    yield PartialText(frame.seq, index, prompt, piece, "".join(pieces).lstrip(), future is not None,
                                      frame.stamp_ns)
                    if self._stop.is_set():
                        break
            except BaseException as exc:
                if future is not None and not future.done():
                    future.set_exception(exc)
                raise
            finally:
                close = getattr(generator, "close", None)
                if close is not None:
                    close()
            if self._stop.is_set():
                self._abandon(future)
                continue
            done = time.monotonic()
            result = StreamResult(
                frame_seq=frame.seq, prompt_index=index, prompt=prompt, text="".join(pieces).strip(),
                stamp_ns=frame.stamp_ns, frame_id=frame.frame_id,
                captured_at=frame.captured_wall, inference_start_at=frame.wall_at(started),
                prompt_start_at=frame.wall_at(prompt_start),
                first_token_at=None if first_token is None else frame.wall_at(first_token),
                completed_at=frame.wall_at(done),
                frame_age_ms=(done - frame.captured_mono) * 1e3,
                start_age_ms=(started - frame.captured_mono) * 1e3,
                prepare_ms=prepare_ms,
                first_token_ms=None if first_token is None else (first_token - prompt_start) * 1e3,
                total_ms=(done - started) * 1e3,
                frames_dropped=dropped if position == 0 else 0,
                frames_captured=self.source.stats.captured,
                source_errors=self.source.stats.errors,
                one_shot=future is not None,
                meta=dict(frame.meta),
            )
            self.stats.add(result)
            if future is not None:
                future.set_result(result)
            yield result
