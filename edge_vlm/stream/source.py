"""The frame-source interface: a capture thread that keeps only the newest frame, reconnecting live sources.

Every source (camera, video file, URL, folder, synthetic scene, rosbag2 bag, frames pushed by a ROS callback)
subclasses `FrameSource` and implements three small hooks: `_open`, `_grab` (the next frame, blocking) and `_close`.
The base class does the rest, identically for all of them:

    with open_source("synthetic:30") as source:
        frame = source.read_latest(max_age_ms=200, timeout_s=1.0)   # newest unread frame, or None

- one capture thread per source grabs frames continuously and keeps ONLY the newest in a one-frame slot; a frame
  that is overwritten before anyone reads it is counted as dropped (a robot wants *now*, not a backlog);
- file-like sources (video, folder, bag, synthetic) are paced to their own timeline in `realtime` playback, or
  delivered one by one without dropping in `lossless` playback (offline evaluation of every frame);
- end of a file raises `EndOfStream` from `read_latest` once the last frame has been read;
- a failing grab is retried with exponential backoff (live sources reopen the device / stream), reported through
  `events` and `on_event`, and only becomes fatal after `max_retries` (never, by default, for live sources);
- a frame that arrives but cannot be decoded (a corrupt file in a folder, a damaged bag message) is skipped and
  counted (`stats.bad_frames`), however many come in a row; only a source that yields nothing decodable for longer
  than `ReconnectPolicy.undecodable_s` has failed, and then the retries above apply. A file-like source that ends
  without one decodable frame fails too.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_vlm.errors import EdgeVLMError

# The fastest a folder or the synthetic scene is played: beyond it the pacing is below a millisecond and the capture
# thread only burns a core drawing frames nobody looks at (edge-vlm's --fps takes the same bound).
MAX_FPS = 1000.0


def check_positive(value, what: str, maximum: float | None = None) -> float:
    """`value` as a finite number > 0 (and <= `maximum`), else one line naming `what`. `value <= 0` alone lets NaN
    through (every comparison with NaN is false), which then disables the limit it sets or stalls the loop."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise EdgeVLMError(f"{what} must be a finite number > 0, got {value!r}")
    if maximum is not None and value > maximum:
        raise EdgeVLMError(f"{what} must be at most {maximum:g}, got {value!r}")
    return float(value)


class EndOfStream(Exception):
    """The source has no more frames (end of a file, folder or bag)."""


class SourceError(EdgeVLMError):
    """A source failed to deliver a frame (device unplugged, stream dropped, unreadable file)."""


class BadFrame(Exception):
    """Raised by a source's `_grab` for one frame that arrived but cannot be decoded: skipped and counted, the
    source goes on to the next frame (see the module docstring)."""


@dataclass
class Frame:
    """One captured frame. `image` is RGB uint8 HxWx3 whatever the source delivered.

    Times: `captured_mono` (time.monotonic, for ages and latencies) and `captured_wall` (time.time, for logs) are
    taken together when the frame reached the capture thread; `stamp_ns` is the source's own stamp (a ROS header
    stamp, a video's position, or the wall clock for live devices)."""

    image: np.ndarray
    seq: int
    captured_mono: float
    captured_wall: float
    stamp_ns: int
    frame_id: str = ""
    meta: dict = field(default_factory=dict)

    def age_ms(self, now_mono: float | None = None) -> float:
        """How old the frame is now (or at `now_mono`), in milliseconds."""
        return ((time.monotonic() if now_mono is None else now_mono) - self.captured_mono) * 1e3

    def wall_at(self, mono: float) -> float:
        """The wall-clock time that corresponds to monotonic time `mono` (same offset as at capture)."""
        return self.captured_wall + (mono - self.captured_mono)


@dataclass
class Grabbed:
    """What a source's `_grab` returns: pixels plus optional timing from the medium itself."""

    image: np.ndarray
    stamp_ns: int | None = None  # None: the wall clock at capture
    media_time_s: float | None = None  # position on the source's own timeline, used to pace file playback
    frame_id: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class ReconnectPolicy:
    """Retry a failing grab after `initial_s`, doubling up to `max_s`; give up after `max_retries` consecutive
    failures (None: never). A successful grab resets the count. Undecodable frames are skipped, not failures, until
    the source has delivered nothing decodable for `undecodable_s` seconds; from then on each one is a failure."""

    initial_s: float = 0.1
    max_s: float = 5.0
    max_retries: int | None = None
    undecodable_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * (2 ** max(0, attempt - 1)))


@dataclass
class SourceStats:
    captured: int = 0  # frames that reached the capture thread
    delivered: int = 0  # frames returned by read_latest
    dropped: int = 0  # overwritten in the slot before anyone read them
    stale: int = 0  # read but refused because older than max_age_ms
    errors: int = 0  # failed grabs
    reconnects: int = 0  # successful recoveries after a failure
    bad_frames: int = 0  # frames that arrived but could not be decoded (skipped)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


PLAYBACK_MODES = ("realtime", "lossless")


class FrameSource:
    """Base class: see the module docstring. Subclasses set `live` and implement `_open`, `_grab`, `_close`."""

    live = False  # True: a device or network stream (reconnects forever by default; cannot be played losslessly)
    paced = True  # False for sources whose `_grab` already blocks at the medium's rate (cameras, URLs, ROS)

    def __init__(self, name: str, *, playback: str = "realtime", speed: float = 1.0,
                 reconnect: ReconnectPolicy | None = None, on_event: Callable[[dict], None] | None = None,
                 on_frame: Callable[[Frame], None] | None = None):
        if playback not in PLAYBACK_MODES:
            raise EdgeVLMError(f"playback {playback!r} is not one of {PLAYBACK_MODES}")
        if playback == "lossless" and self.live:
            raise EdgeVLMError(f"{name} is a live source: lossless playback is only for files, folders, bags and "
                               "the synthetic scene")
        self.name = name
        self.playback = playback
        self.speed = check_positive(speed, "playback speed")
        self.reconnect = reconnect or ReconnectPolicy(max_retries=None if self.live else 3)
        self.on_event = on_event
        self.on_frame = on_frame  # called in the capture thread for every frame (e.g. a recorder's tap)
        self.nominal_fps: float | None = None
        self.stats = SourceStats()
        self.events: deque[dict] = deque(maxlen=1000)  # the latest; a days-long run keeps flat memory
        self._slot: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended = False
        self._failure: BaseException | None = None
        self._is_open = False

    # ---- hooks for subclasses -------------------------------------------------------------------------------
    def _open(self) -> None:
        """Acquire the device / file. Raise EdgeVLMError (bad path) or SourceError (transient)."""

    def _grab(self) -> Grabbed:
        """Return the next frame, blocking as long as the medium needs. Raise EndOfStream or SourceError."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the device / file. Must be safe to call twice."""

    def _recover(self) -> None:
        """Called after a failed grab, before retrying. Live sources reopen; files just retry the grab."""
        if self.live:
            self._close()
            self._open()

    # ---- public interface ---------------------------------------------------------------------------------------
    def open(self) -> FrameSource:
        """Open the source and start its capture thread (idempotent)."""
        if self._is_open:
            return self
        self._open()
        self._is_open = True
        self._thread = threading.Thread(target=self._capture_loop, name=f"capture:{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the capture thread and release the source (idempotent)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self._is_open:
            self._is_open = False
            self._close()

    def __enter__(self) -> FrameSource:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._is_open

    @property
    def ended(self) -> bool:
        """True once a file-like source has delivered its last frame to the capture thread."""
        return self._ended

    def read_latest(self, max_age_ms: float | None = None, timeout_s: float | None = None) -> Frame | None:
        """The newest frame nobody has read yet, waiting up to `timeout_s` (None: forever) for one.

        A frame older than `max_age_ms` is refused (counted as stale) and the wait goes on for a fresher one.
        Returns None on timeout. Raises EndOfStream after the last frame of a file, and SourceError when the
        source failed for good (after its retries)."""
        if not self._is_open:
            raise EdgeVLMError(f"source {self.name} is not open: use it as a context manager or call open()")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                frame = self._slot
                if frame is not None:
                    self._slot = None
                    self._cond.notify_all()  # a lossless producer waits for the slot to empty
                    if max_age_ms is not None and frame.age_ms() > max_age_ms:
                        self.stats.stale += 1
                        continue
                    self.stats.delivered += 1
                    return frame
                if self._failure is not None:
                    raise SourceError(f"source {self.name} failed: {self._failure}") from self._failure
                if self._ended or self._stop.is_set():
                    raise EndOfStream(self.name)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(timeout=remaining)

    # ---- the capture thread -------------------------------------------------------------------------------------
    def _event(self, kind: str, message: str) -> None:
        event = {"source": self.name, "event": kind, "message": message, "time": time.time()}
        self.events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a reporting callback must never kill the capture thread
                pass

    def _capture_loop(self) -> None:
        failures = 0
        start_mono: float | None = None
        start_media: float | None = None
        last_good = time.monotonic()  # when the source last gave a decodable frame (or opened)
        try:
            while not self._stop.is_set():
                try:
                    grabbed = self._grab()
                except EndOfStream:
                    self._check_anything_decoded()
                    break
                except Exception as exc:  # any grab failure is retried; see ReconnectPolicy
                    if isinstance(exc, BadFrame):
                        self.stats.bad_frames += 1
                        self._event("skipped", str(exc))
                        silent_s = time.monotonic() - last_good
                        if silent_s <= self.reconnect.undecodable_s:
                            continue
                        exc = SourceError(f"nothing decodable for {silent_s:.1f} s: {exc}")
                    failures += 1
                    if not self._retry(exc, failures):
                        break
                    continue
                last_good = time.monotonic()
                if failures:
                    self.stats.reconnects += 1
                    self._event("recovered", f"frames flowing again after {failures} failed attempt(s)")
                    failures = 0
                if self.paced and self.playback == "realtime" and grabbed.media_time_s is not None:
                    if start_mono is None:
                        start_mono, start_media = time.monotonic(), grabbed.media_time_s
                    due = start_mono + (grabbed.media_time_s - start_media) / self.speed
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        break
                self._publish(grabbed)
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _retry(self, exc: BaseException, failures: int) -> bool:
        """After the `failures`-th failure in a row: wait, reopen a live source, and say whether to go on."""
        self.stats.errors += 1
        policy = self.reconnect
        if policy.max_retries is not None and failures > policy.max_retries:
            self._event("gave_up", f"{type(exc).__name__}: {exc} (after {failures - 1} retries)")
            self._failure = exc
            return False
        delay = policy.delay(failures)
        self._event("error", f"{type(exc).__name__}: {exc}; retry {failures} in {delay:.2f}s")
        if self._stop.wait(delay):
            return False
        try:
            self._recover()
        except Exception as reopen_exc:  # the next grab fails again and backs off further
            self._event("error", f"reopen failed: {type(reopen_exc).__name__}: {reopen_exc}")
        return True

    def _check_anything_decoded(self) -> None:
        """A file, folder or bag that ended without one decodable frame has failed (not merely ended)."""
        if self.stats.captured == 0 and self.stats.bad_frames > 0:
            message = f"none of its {self.stats.bad_frames} frame(s) could be decoded"
            self._event("gave_up", message)
            self._failure = SourceError(message)

    def _publish(self, grabbed: Grabbed) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        frame = Frame(
            image=grabbed.image, seq=self.stats.captured, captured_mono=now_mono, captured_wall=now_wall,
            stamp_ns=grabbed.stamp_ns if grabbed.stamp_ns is not None else int(now_wall * 1e9),
            frame_id=grabbed.frame_id, meta=grabbed.meta,
        )
        with self._cond:
            if self.playback == "lossless":
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(timeout=0.1)
            if self._slot is not None:
                self.stats.dropped += 1
            self._slot = frame
            self.stats.captured += 1
            self._cond.notify_all()
        if self.on_frame is not None:
            try:
                self.on_frame(frame)
            except Exception as exc:  # a broken tap (recorder) is reported, capture goes on
                self._event("error", f"frame tap failed: {type(exc).__name__}: {exc}")


class PushSource(FrameSource):
    """Frames pushed in from outside (a ROS subscription callback): `push()` is cheap and never blocks.

    There is no capture thread: the pusher's thread plays its role, and the newest-frame slot is the same."""

    live = True
    paced = False

    def __init__(self, name: str = "push", **kwargs):
        super().__init__(name, **kwargs)

    def open(self) -> PushSource:
        self._is_open = True
        return self

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        self._is_open = False

    def push(self, image: np.ndarray, stamp_ns: int | None = None, frame_id: str = "", meta: dict | None = None) -> None:
        """Offer a new frame (RGB uint8 HxWx3); an unread older frame is dropped."""
        self._publish(Grabbed(image=image, stamp_ns=stamp_ns, frame_id=frame_id, meta=meta or {}))


def as_rgb8(image) -> np.ndarray:
    """Any frame a source decoded (PIL image, numpy HxW / HxWx3 / HxWx4, 8 or 16 bit) -> RGB uint8 HxWx3."""
    from edge_vlm.imaging import load_image, to_rgb

    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    return np.asarray(to_rgb(load_image(image)))
