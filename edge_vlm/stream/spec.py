"""Source spec strings (the CLI's --source) -> a FrameSource.

    0 | camera:0 | camera:/dev/video2      a camera (OpenCV)
    video:clip.mp4 | clip.mp4              a video file
    rtsp://host/stream | http://host/mjpg  a network stream
    folder:DIR | DIR                       an image folder
    synthetic | synthetic:FPS              the synthetic moving scene
    bag:PATH | PATH (a rosbag2 dir/.db3/.mcap)   a bag's image topic (--topic)
"""

from __future__ import annotations

from pathlib import Path

from edge_vlm.errors import EdgeVLMError
from edge_vlm.stream.source import FrameSource

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
BAG_SUFFIXES = (".db3", ".mcap", ".bag")
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
SPEC_HELP = ("0 | camera:N | video:FILE | FILE.mp4 | rtsp://... | http://... | folder:DIR | synthetic[:FPS] | "
             "bag:PATH")


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise EdgeVLMError(f"{what} must be a number, got {text!r}") from None


def open_source(spec: str, *, topic: str | None = None, fps: float | None = None,
                size: tuple[int, int] | None = None, max_frames: int | None = None, **kwargs) -> FrameSource:
    """Build (not open) the source a spec string names. `kwargs` go to FrameSource (playback, speed,
    reconnect, on_event, on_frame). `fps` sets the folder rate / synthetic rate; `max_frames` ends a synthetic
    scene; `topic` picks a bag's image topic."""
    source = _build(str(spec).strip(), topic, fps, size, max_frames, kwargs)
    from edge_vlm.stream.bag import BagSource

    if topic is not None and not isinstance(source, BagSource):
        raise EdgeVLMError(f"--topic {topic} is only for bag sources, and {spec} is not a bag")
    return source


def _build(spec: str, topic, fps, size, max_frames, kwargs) -> FrameSource:
    if not spec:
        raise EdgeVLMError(f"empty --source: use one of {SPEC_HELP}")
    kind, _, rest = spec.partition(":")
    if spec.startswith(URL_SCHEMES):
        from edge_vlm.stream.opencv_sources import UrlSource

        return UrlSource(spec, **kwargs)
    if spec.isdigit() or kind == "camera":
        from edge_vlm.stream.opencv_sources import CameraSource

        device = rest if kind == "camera" else spec
        if not device:
            raise EdgeVLMError("camera: needs an index or a device path, e.g. camera:0")
        return CameraSource(int(device) if device.isdigit() else device, **kwargs)
    if kind == "synthetic":
        rate = _number(rest, "the synthetic fps") if rest else (fps or 30.0)
        from edge_vlm.stream.file_sources import SyntheticSource

        return SyntheticSource(fps=rate, size=size or (320, 240), max_frames=max_frames, **kwargs)
    if kind == "video":
        from edge_vlm.stream.opencv_sources import VideoFileSource

        return VideoFileSource(rest, **kwargs)
    if kind == "folder":
        from edge_vlm.stream.file_sources import FolderSource

        return FolderSource(rest, fps=fps or 10.0, **kwargs)
    if kind == "bag":
        from edge_vlm.stream.bag import BagSource

        return BagSource(rest, topic=topic, **kwargs)
    path = Path(spec)
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            from edge_vlm.stream.bag import BagSource

            return BagSource(path, topic=topic, **kwargs)
        from edge_vlm.stream.file_sources import FolderSource

        return FolderSource(path, fps=fps or 10.0, **kwargs)
    if path.suffix.lower() in BAG_SUFFIXES and path.is_file():
        from edge_vlm.stream.bag import BagSource

        return BagSource(path, topic=topic, **kwargs)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        from edge_vlm.stream.opencv_sources import VideoFileSource

        return VideoFileSource(path, **kwargs)
    if path.exists():
        raise EdgeVLMError(f"cannot tell what kind of source {spec} is: prefix it, e.g. video:{spec}")
    raise EdgeVLMError(f"source {spec!r} not found and not a known form: use one of {SPEC_HELP}")
