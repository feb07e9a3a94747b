"""Sources that need no extra: an image folder and the synthetic moving scene."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edge_vlm.errors import EdgeVLMError
from edge_vlm.stream.source import (
    MAX_FPS,
    BadFrame,
    EndOfStream,
    FrameSource,
    Grabbed,
    SourceError,
    as_rgb8,
    check_positive,
)

# The synthetic scene's largest side (as `edge-vlm stream --size` says): one 8192x8192 RGB frame is 200 MB.
MAX_SYNTHETIC_SIDE = 8192
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class FolderSource(FrameSource):
    """The images of a folder in name order, as frames at `fps` (realtime) or one by one (lossless).

    An unreadable image is reported, counted and skipped, however many come in a row (a folder of camera dumps
    often has truncated files); a folder with no readable image at all fails."""

    def __init__(self, directory: str | Path, fps: float = 10.0, **kwargs):
        directory = Path(directory)
        if not directory.is_dir():
            raise EdgeVLMError(f"image folder not found: {directory}" + (" (it is a file: give its folder, or "
                                                                         "video:PATH for a video)"
                                                                         if directory.is_file() else ""))
        fps = check_positive(fps, "folder fps", MAX_FPS)
        self.paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.paths:
            raise EdgeVLMError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
        super().__init__(f"folder:{directory}", **kwargs)
        self.nominal_fps = fps
        self._index = 0

    def _grab(self) -> Grabbed:
        if self._index >= len(self.paths):
            raise EndOfStream(self.name)
        index = self._index
        path = self.paths[index]
        self._index += 1
        try:
            image = as_rgb8(path)
        except Exception as exc:  # whatever a damaged file makes the decoder raise, it is one bad frame
            message = str(exc) if isinstance(exc, EdgeVLMError) else f"cannot read image {path}: {exc}"
            raise BadFrame(message) from exc
        return Grabbed(image=image, media_time_s=index / self.nominal_fps, meta={"path": path.name})


def _fallback_moving_scene(t: float, size: tuple[int, int]) -> Image.Image:
    """A plain moving scene (a red disc on a circle, a blue square sliding left-right) used until
    edge_vlm.data.synth.moving_scene_frame exists; smooth in t so consecutive frames differ a little."""
    width, height = size
    image = Image.new("RGB", (width, height), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    radius = max(2, min(width, height) // 8)
    cx = width / 2 + math.cos(t) * width / 4
    cy = height / 2 + math.sin(t) * height / 4
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(220, 30, 30))
    side = radius * 1.6
    sx = (width - side) * (0.5 + 0.5 * math.sin(0.7 * t))
    sy = height * 0.75 - side / 2
    draw.rectangle([sx, sy, sx + side, sy + side], fill=(30, 60, 220))
    return image


def moving_scene_renderer():
    """The function that draws the synthetic scene: the synthetic world's `moving_scene_frame(t, size)` when the
    data package provides it, else a plain fallback. One switch point, so the source never cares which."""
    try:
        from edge_vlm.data.synth import moving_scene_frame
    except ImportError:
        return _fallback_moving_scene
    return moving_scene_frame


def render_scene(renderer, t: float, size: tuple[int, int]) -> np.ndarray:
    """Call a scene renderer and normalise what it returns to RGB uint8 of exactly `size` (width, height)."""
    try:
        image = renderer(t, size)
    except TypeError:  # a renderer that takes one side length draws a square
        image = renderer(t, max(size))
    rgb = as_rgb8(image)
    if (rgb.shape[1], rgb.shape[0]) != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize(tuple(size), Image.Resampling.BILINEAR))
    return rgb


class SyntheticSource(FrameSource):
    """A synthetic camera: a moving scene drawn at `fps`; endless unless `max_frames` is given.

    Behaves like a camera for the loop (it keeps producing while the model thinks, so frames are dropped) but is
    deterministic: frame k shows the scene at t = k / fps."""

    def __init__(self, fps: float = 30.0, size: tuple[int, int] = (320, 240), max_frames: int | None = None,
                 renderer=None, **kwargs):
        fps = check_positive(fps, "synthetic fps", MAX_FPS)
        if min(size) < 8 or max(size) > MAX_SYNTHETIC_SIDE:
            raise EdgeVLMError(f"synthetic frame size must be 8 to {MAX_SYNTHETIC_SIDE} pixels a side, got "
                               f"{size[0]}x{size[1]}")
        super().__init__(f"synthetic:{fps:g}", **kwargs)
        self.nominal_fps = fps
        self.size = (int(size[0]), int(size[1]))
        self.max_frames = max_frames
        self.renderer = renderer or moving_scene_renderer()
        self._index = 0

    def _grab(self) -> Grabbed:
        if self.max_frames is not None and self._index >= self.max_frames:
            raise EndOfStream(self.name)
        index = self._index
        t = index / self.nominal_fps
        try:
            image = render_scene(self.renderer, t, self.size)
        except EdgeVLMError as exc:
            raise SourceError(f"the scene renderer failed at t={t:.3f}: {exc}") from exc
        self._index += 1
        return Grabbed(image=image, media_time_s=t, meta={"t": round(t, 6)})
