"""The stream runner inside the server (`edge-vlm serve --source S --prompt P`), for the live page.

The runner (edge_vlm.stream) answers the standing prompts about the newest frame on its own thread; it reaches the
model through LockedEngine, which takes the worker's ModelLock per call, so the API's requests and the stream never
run the model at the same time and requests go first. The page reads `snapshot()` (newest frame, newest answer,
frame age, drop rate, latencies) through server-sent events.
"""

from __future__ import annotations

import io
import threading
import time
from collections import deque

from PIL import Image

from edge_vlm.engine import GenerationConfig


class LockedEngine:
    """An engine whose every call holds the model lock as the live stream (lower priority than requests)."""

    def __init__(self, engine, lock):
        self._engine = engine
        self._lock = lock

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def prepare_image(self, image):
        with self._lock.hold(request=False):
            return self._engine.prepare_image(image)

    def stream(self, prepared, question, history=None, config=None):
        # held for the whole answer; the runner closes this generator when it stops, which releases the lock
        with self._lock.hold(request=False):
            yield from self._engine.stream(prepared, question, history, config)


class LiveView:
    """A StreamRunner over `source` with the state the live page shows."""

    def __init__(self, engine, lock, source, prompts: list[str], max_hz: float | None,
                 generation: GenerationConfig, metrics=None, history: int = 60):
        from edge_vlm.stream import StreamRunner

        self.source = source
        self.prompts = list(prompts)
        self.metrics = metrics
        self.runner = StreamRunner(LockedEngine(engine, lock), source, prompts, max_hz=max_hz,
                                   generation=generation, on_result=self._on_result, on_partial=self._on_partial)
        source.on_frame = self._on_frame
        self._lock = threading.Lock()
        self._frame = None
        self._jpeg: tuple[int, bytes] | None = None
        self._result = None
        self._partial = ""
        self.latencies_ms: deque[float] = deque(maxlen=history)
        self.events: deque[str] = deque(maxlen=5)
        self.error: str | None = None

    def start(self) -> LiveView:
        self.source.open()
        self.runner.start()
        return self

    def stop(self) -> None:
        self.runner.stop("server stopping")
        try:
            self.runner.join(10)
        except Exception as exc:  # the runner's own failure: already shown on the page
            self.error = f"{type(exc).__name__}: {exc}"
        self.source.close()

    # ---- called on the capture and runner threads ------------------------------------------------------------------
    def _on_frame(self, frame) -> None:
        self._frame = frame  # a reference swap: the capture thread never waits for the page

    def _on_partial(self, partial) -> None:
        self._partial = partial.text

    def _on_result(self, result) -> None:
        with self._lock:
            self._result = result
            self._partial = ""
            self.latencies_ms.append(result.total_ms)
        if self.metrics is not None:
            self.metrics.stream_answer(result.frame_age_ms)

    # ---- read by the page ------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        thread = self.runner._thread
        return thread is not None and thread.is_alive()

    def snapshot(self) -> dict:
        frame, result = self._frame, self._result
        captured = self.source.stats.captured
        answered = self.runner.frames_answered
        with self._lock:
            latencies = [round(v, 1) for v in self.latencies_ms]
        state = {
            "running": self.running,
            "stop_reason": self.runner.stop_reason or None,
            "source": self.source.name,
            "prompts": self.prompts,
            "frame_seq": None if frame is None else frame.seq,
            "frame_age_ms": None if frame is None else round(frame.age_ms(), 1),
            "frames_captured": captured,
            "frames_answered": answered,
            "drop_rate": (1.0 - answered / captured) if captured else None,
            "partial": self._partial,
            "latencies_ms": latencies,
            "answer": None,
        }
        if result is not None:
            state["answer"] = {"text": result.text, "prompt": result.prompt, "frame_seq": result.frame_seq,
                               "frame_age_ms": round(result.frame_age_ms, 1), "total_ms": round(result.total_ms, 1),
                               "age_now_ms": round((time.time() - result.completed_at) * 1e3, 1)}
        return state

    def frame_jpeg(self) -> tuple[int, bytes] | None:
        """(seq, JPEG bytes) of the newest frame, encoded once per frame."""
        frame = self._frame
        if frame is None:
            return None
        cached = self._jpeg
        if cached is not None and cached[0] == frame.seq:
            return cached
        out = io.BytesIO()
        Image.fromarray(frame.image).save(out, format="JPEG", quality=80)
        self._jpeg = (frame.seq, out.getvalue())
        return self._jpeg
