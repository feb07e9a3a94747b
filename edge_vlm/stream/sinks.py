"""Where results go: a JSONL log, a video recording with the answers drawn on the frames (plus the bag writer in
bag.py). Each sink has `write(result)` and `close()`; `close()` flushes and is safe to call twice."""

from __future__ import annotations

import json
import os
import queue
import tempfile
import textwrap
import threading
from pathlib import Path

import numpy as np

from edge_vlm.errors import EdgeVLMError
from edge_vlm.fileio import check_output_parent, first_json_line

# fourcc per container: H.264 ('avc1') writing fails in the OpenCV 5 wheels (see docs/stack.md), so mp4 gets mp4v.
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}


def _check_parent(path: Path, what: str) -> None:
    if path.is_dir():
        raise EdgeVLMError(f"{what} {path} is a directory: give a file path")
    check_output_parent(path, what)


# Keys every answer line starts with (StreamResult's first fields): a file whose first line has them is a log an
# earlier run wrote, which a rerun may replace.
_JSONL_KEYS = ("frame_seq", "prompt_index", "prompt", "text", "stamp_ns", "frame_age_ms")


def is_answers_jsonl(path: Path) -> bool:
    """A `--jsonl` log an earlier stream wrote: its first line is an answer record."""
    record = first_json_line(path)
    return record is not None and all(key in record for key in _JSONL_KEYS)


class JsonlSink:
    """One JSON object per answer. Written and flushed line by line rather than atomically: this is a log a robot
    operator tails, and after a crash every finished answer is on disk as a complete line."""

    def __init__(self, path: str | Path, extra: dict | None = None):
        self.path = Path(path)
        _check_parent(self.path, "JSONL output")
        self.extra = extra or {}
        # backslashreplace: a file name that is not UTF-8 (a lone surrogate in Python) is written as its JSON escape
        # \udcXX instead of failing the write; the line stays valid JSON.
        try:
            self._file = self.path.open("w", encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            raise EdgeVLMError(f"cannot write the JSONL output {self.path}: {exc.strerror or exc}") from exc
        self.count = 0

    def write(self, result) -> None:
        record = {**result.to_dict(), **self.extra}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only
    return text.encode("ascii", "replace").decode("ascii")


def draw_overlay(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """A copy of `rgb` with `lines` drawn on a dark band at the top (wrapped to the frame width)."""
    import cv2

    out = np.ascontiguousarray(rgb.copy())
    height, width = out.shape[:2]
    scale = max(0.35, min(1.0, width / 900))
    thickness = 1 if scale < 0.7 else 2
    (char_w, char_h), base = cv2.getTextSize("M", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    per_line = max(8, (width - 10) // max(1, char_w))
    wrapped = [w for line in lines for w in (textwrap.wrap(_ascii(line), per_line) or [""])]
    wrapped = wrapped[: max(1, (height // 2) // (char_h + base + 4))]
    band = min(height, 6 + len(wrapped) * (char_h + base + 4))
    out[:band] = (out[:band].astype(np.float32) * 0.35).astype(np.uint8)
    y = 4 + char_h
    for line in wrapped:
        cv2.putText(out, line, (5, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
        y += char_h + base + 4
    return out


class VideoRecorder:
    """Records every captured frame with the latest answers drawn on it.

    `tap(frame)` is the source's on_frame hook (capture thread): it only enqueues, and drops the frame (counted)
    when the writer lags (more than `queue_size` frames or `queue_mb` megabytes waiting), so recording never slows
    capture nor fills memory with large frames. The file is written beside `path` under a temporary
    name and renamed into place by `close()`: a killed run leaves no truncated video."""

    def __init__(self, path: str | Path, fps: float | None = None, queue_size: int = 64, queue_mb: float = 512):
        from edge_vlm.deps import require

        require("cv2")
        self.path = Path(path)
        _check_parent(self.path, "recording")
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise EdgeVLMError(f"recording {self.path} must end in one of {', '.join(VIDEO_CODECS)} (H.264 writing "
                               "is not available in the OpenCV wheels)")
        self.fourcc = VIDEO_CODECS[suffix]
        self.fps = fps or 10.0
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=suffix, dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._queue_bytes = int(queue_mb * 2**20)
        self._queued_bytes = 0
        self._lines: list[str] = ["(waiting for the first answer)"]
        self._lock = threading.Lock()
        self._writer = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0
        self.frames_skipped = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="recorder", daemon=True)
        self._thread.start()

    def tap(self, frame) -> None:
        size = frame.image.nbytes
        with self._lock:
            if self._queued_bytes and self._queued_bytes + size > self._queue_bytes:
                self.frames_skipped += 1
                return
            self._queued_bytes += size
        try:
            self._queue.put_nowait(frame.image)
        except queue.Full:
            with self._lock:
                self._queued_bytes -= size
            self.frames_skipped += 1

    def write(self, result) -> None:
        """Show this answer on the following frames (the latest answer per prompt)."""
        label = "Q" if not result.one_shot else "Q*"
        line = f"{label}: {result.prompt} -> {result.text}  [age {result.frame_age_ms:.0f} ms]"
        with self._lock:
            kept = [x for x in self._lines if not x.startswith(f"{label}: {result.prompt} ->")]
            self._lines = [x for x in kept if not x.startswith("(waiting")] + [line]

    def _work(self) -> None:
        import cv2

        while True:
            image = self._queue.get()
            if image is None:
                return
            with self._lock:
                self._queued_bytes -= image.nbytes
            if self._error is not None:
                continue
            try:
                if self._writer is None:
                    self._size = (image.shape[1], image.shape[0])
                    self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                                   self._size)
                    if not self._writer.isOpened():
                        raise EdgeVLMError(f"OpenCV cannot write {self.fourcc} video to {self.path}")
                if (image.shape[1], image.shape[0]) != self._size:
                    image = cv2.resize(image, self._size)
                with self._lock:
                    lines = list(self._lines)
                self._writer.write(cv2.cvtColor(draw_overlay(image, lines), cv2.COLOR_RGB2BGR))
                self.frames_written += 1
            except BaseException as exc:  # reported by close()
                self._error = exc

    def close(self) -> None:
        """Write the queued frames, finish the file and move it into place."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        if self._writer is not None:
            self._writer.release()
        if self._error is not None or self.frames_written == 0:
            self._tmp.unlink(missing_ok=True)
            if self._error is not None:
                raise EdgeVLMError(f"recording failed: {self._error}") from self._error
            return
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private; the recording is an ordinary file
        os.replace(self._tmp, self.path)
