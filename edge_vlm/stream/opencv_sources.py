"""Sources read through OpenCV (the `camera` extra): a camera index, a video file, an RTSP / HTTP URL.

cv2 is imported when a source opens, never by `import edge_vlm` or `import edge_vlm.stream`.

OpenCV and the FFmpeg inside it print their own log lines straight to file descriptor 2 ("[ WARN:0@0.01] ... can't
open camera by index", "[mov,mp4,...] moov atom not found", "[tcp @ ...] Connection refused") before our one-line
refusal says the same thing. `_cv2` silences them through the variables OpenCV reads: OPENCV_LOG_LEVEL (when cv2 is
imported; cv2.utils.logging.setLogLevel covers a cv2 imported earlier) and OPENCV_FFMPEG_LOGLEVEL (an FFmpeg log
level, -8 = AV_LOG_QUIET, read when OpenCV's FFmpeg backend is first used). Set either yourself to see the messages
again (e.g. OPENCV_LOG_LEVEL=INFO OPENCV_FFMPEG_LOGLEVEL=24 to debug a camera): a value you set is kept. Some
readers print whatever the levels say (OpenCV's own AVI parser: "Unexpected element. Expected: LIST"), so a capture
is also opened with fd 2 held aside: see `_open_holding_stderr`.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_vlm.errors import EdgeVLMError
from edge_vlm.stream.source import EndOfStream, FrameSource, Grabbed, SourceError

QUIET_OPENCV = {"OPENCV_LOG_LEVEL": "SILENT", "OPENCV_FFMPEG_LOGLEVEL": "-8"}


def _cv2():
    from edge_vlm.deps import require

    user_level = "OPENCV_LOG_LEVEL" in os.environ
    for key, value in QUIET_OPENCV.items():
        os.environ.setdefault(key, value)
    cv2 = require("cv2")
    if not user_level:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def _open_holding_stderr(make):
    """`make()` (which opens a cv2.VideoCapture) with file descriptor 2 pointed at an anonymous file. If the
    capture opened, what was written there is passed on to the real stderr (a working source loses no warning); if it
    did not, it is dropped: the one-line refusal that follows says what is wrong. fd 2 is the process's, so a line
    another thread writes to stderr during a failed open is dropped too (an open takes milliseconds, up to the URL
    timeout for a dead stream)."""
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (a closed or replaced stderr): nothing to hold
        return make()
    # memfd (Linux): a file in memory only, with no name in any folder; elsewhere an unlinked temp file
    memfd = getattr(os, "memfd_create", None)
    with (open(memfd("edge-vlm-stderr"), "w+b") if memfd else tempfile.TemporaryFile()) as held:
        os.dup2(held.fileno(), 2)
        try:
            capture = make()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if capture.isOpened():
            held.seek(0)
            text = held.read()
            while text:
                text = text[os.write(2, text):]
    return capture


class _OpenCVSource(FrameSource):
    """Shared reading: BGR from cv2 -> RGB uint8."""

    def __init__(self, name: str, target, **kwargs):
        super().__init__(name, **kwargs)
        self.target = target
        self._capture = None

    def _make_capture(self):
        raise NotImplementedError

    def _open(self) -> None:
        cv2 = _cv2()
        capture = _open_holding_stderr(self._make_capture)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"OpenCV could not open {self.target!r}")
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.nominal_fps = fps if fps and 0 < fps < 1000 else self.nominal_fps

    def _read_bgr(self):
        if self._capture is None:
            raise SourceError(f"{self.name} is not open")
        ok, bgr = self._capture.read()
        return bgr if ok and bgr is not None else None

    def _close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    @staticmethod
    def _to_rgb(bgr):
        cv2 = _cv2()
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        if bgr.shape[2] == 4:
            return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class CameraSource(_OpenCVSource):
    """A V4L2 / UVC camera by index (`0`), or any OpenCV capture target treated as a live device.

    Live: a failed read (unplugged, driver hiccup) reopens the device with backoff; frames are never paced (the
    device's own rate decides). The driver's buffer is limited to one frame where the backend allows it, so a
    slow consumer does not read seconds-old frames."""

    live = True
    paced = False

    def __init__(self, device: int | str = 0, **kwargs):
        super().__init__(f"camera:{device}", device, **kwargs)
        self.nominal_fps = 30.0

    def _make_capture(self):
        cv2 = _cv2()
        capture = cv2.VideoCapture(self.target)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return capture

    def _grab(self) -> Grabbed:
        bgr = self._read_bgr()
        if bgr is None:
            raise SourceError(f"no frame from {self.name}")
        return Grabbed(image=self._to_rgb(bgr))


class UrlSource(CameraSource):
    """An RTSP / HTTP(S) stream (IP camera, MJPEG server). Live, with open/read timeouts so a dead server is
    noticed within seconds and reconnected with backoff."""

    def __init__(self, url: str, timeout_s: float = 5.0, **kwargs):
        self.timeout_ms = int(timeout_s * 1000)
        super().__init__(url, **kwargs)
        self.name = url

    def _make_capture(self):
        cv2 = _cv2()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
        return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)


class VideoFileSource(_OpenCVSource):
    """A video file, played on its own timeline (realtime) or frame by frame (lossless); ends at the last frame."""

    def __init__(self, path: str | Path, **kwargs):
        path = Path(path)
        if not path.is_file():
            raise EdgeVLMError(f"video file not found: {path}" + (" (it is a directory: use folder:DIR)"
                                                                  if path.is_dir() else ""))
        if path.stat().st_size == 0:  # refused here, as an empty picture is, before FFmpeg guesses at it
            raise EdgeVLMError(f"video file {path} is empty (0 bytes)")
        super().__init__(f"video:{path}", str(path), **kwargs)
        self._index = 0

    def _make_capture(self):
        return _cv2().VideoCapture(self.target)

    def _open(self) -> None:
        try:
            super()._open()
        except SourceError as exc:
            raise EdgeVLMError(f"cannot read video {self.target}: not a video OpenCV can decode ({exc})") from exc
        self.nominal_fps = self.nominal_fps or 25.0
        self._index = 0

    def _grab(self) -> Grabbed:
        bgr = self._read_bgr()
        if bgr is None:
            raise EndOfStream(self.name)
        # CAP_PROP_POS_MSEC is the decoder's presentation time; frame index / fps when the container has none
        media_time = self._index / self.nominal_fps
        self._index += 1
        return Grabbed(image=self._to_rgb(bgr), media_time_s=media_time,
                       stamp_ns=int(media_time * 1e9), meta={"position_s": round(media_time, 6)})

