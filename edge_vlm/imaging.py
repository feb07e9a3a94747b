"""Image loading and CLIP preprocessing in numpy/PIL (no torch).

Shared by training (model/, data/) and deployment (runtime/), so both sides see identical pixels. docs/preprocessing.md
says how a picture becomes pixel values and which pictures are refused. In short: a picture is read as LLaVA reads it
(`Image.open(path).convert("RGB")`: alpha dropped, no EXIF rotation), except that 16-bit pictures are scaled to 8 bits
instead of saturating; then LLaVA's `expand2square` (pad mode) and the steps of transformers' CLIP image processor
(tests compare both against the upstream code). Written here rather than calling transformers because the runtime
must not depend on transformers or torch.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edge_vlm.configfile import file_kind
from edge_vlm.errors import EdgeVLMError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The CLIP mean as 8-bit RGB: the colour LLaVA pads with.
PAD_COLOR = (122, 116, 104)

# The most pixels a picture, or any intermediate picture of `preprocess` (the padded square, the resized picture
# before the crop), may have: 150 megapixels, 450 MB as 8-bit RGB. Above every common camera (a 108 MP phone photo
# passes, padded square included); it refuses decompression bombs from their header, before anything is decoded.
MAX_IMAGE_PIXELS = 150_000_000

ImageInput = str | os.PathLike | Image.Image | np.ndarray

# The preprocessing modes, LLaVA's (and LLaVA-Phi's image_aspect_ratio): 'pad' squares the picture first
# (expand2square, in the processor's mean colour), 'square' is CLIP's plain resize and centre crop.
ASPECT_MODES = ("pad", "square")

# PIL's own bomb check warns (above 89.5 MP) or raises (above 179 MP) inside Image.open, through the process-wide
# warnings filters. We silence its warning for our reads only, since MAX_IMAGE_PIXELS is checked right after; the lock
# keeps two of our threads from restoring each other's filters in the wrong order.
_OPEN_LOCK = threading.Lock()



# The largest input side a model may declare (CLIP-L takes 336; high-resolution towers reach ~1500).
MAX_MODEL_IMAGE_SIZE = 4096


def _channel_values(name: str, values) -> tuple[float, float, float]:
    """Three finite numbers, one per RGB channel."""
    try:
        numbers = tuple(float(x) for x in values)
    except (TypeError, ValueError):
        raise EdgeVLMError(f"image {name} must be 3 numbers (R, G, B), got {values!r}") from None
    if len(numbers) != 3 or not all(math.isfinite(x) for x in numbers):
        raise EdgeVLMError(f"image {name} must be 3 finite numbers (R, G, B), got {values!r}")
    return numbers


@dataclass
class ImageConfig:
    """How images become pixel values. `aspect` 'pad': pad to a square with the mean colour first (stage 2,
    most evaluations); 'square': CLIP's own resize + center crop (stage 1, ScienceQA, MM-Vet in LP)."""

    image_size: int = 336
    aspect: str = "pad"
    mean: tuple[float, ...] = field(default=CLIP_MEAN)
    std: tuple[float, ...] = field(default=CLIP_STD)

    def __post_init__(self):
        # These settings come from files (a checkpoint's edge_vlm.json, a bundle's manifest): each is checked, so a
        # damaged value is one clear error instead of NaN pixels, a division by zero or a huge allocation.
        if self.aspect not in ASPECT_MODES:
            raise EdgeVLMError(f"image aspect mode {self.aspect!r} is not one of {ASPECT_MODES}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) \
                or not 1 <= self.image_size <= MAX_MODEL_IMAGE_SIZE:
            raise EdgeVLMError(f"image_size must be a whole number from 1 to {MAX_MODEL_IMAGE_SIZE}, "
                               f"got {self.image_size!r}")
        self.mean = _channel_values("mean", self.mean)
        self.std = _channel_values("std", self.std)
        if min(self.std) <= 0:
            raise EdgeVLMError(f"image std must be positive for every channel, got {list(self.std)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageConfig:
        if not isinstance(data, dict):
            raise EdgeVLMError(f"image settings must be a mapping, got {type(data).__name__}")
        known = {k: data[k] for k in ("image_size", "aspect", "mean", "std") if k in data}
        return cls(**known)


# ------------------------------------------------------------------------------------------------ reading


def load_image(image: ImageInput) -> Image.Image:
    """Open a path, PIL image or numpy array (HxW or HxWxC, uint8/uint16/float in [0,1]) as a decoded PIL image.

    Raises EdgeVLMError naming the file for: a missing file, a directory or other non-regular file (FIFO, device,
    socket: refused before opening, so a FIFO cannot hang the read), an empty file, an unknown format, a picture
    over MAX_IMAGE_PIXELS (checked from the header, before decoding) and a truncated or damaged picture (decoded
    here, so it fails now rather than later in the model).
    """
    if isinstance(image, Image.Image):
        return _checked_pil(image)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    if isinstance(image, (str, os.PathLike)):
        return _read_file(Path(image))
    raise EdgeVLMError(f"unsupported image type {type(image).__name__}: give a path, a PIL image or a numpy array")


def decode_image_bytes(data: bytes, what: str) -> Image.Image:
    """An encoded picture held in memory (base64 in a TSV, a ROS CompressedImage) -> decoded PIL image, with the
    same bounds and one-line errors as a file; `what` names it in the errors."""
    if not data:
        raise EdgeVLMError(f"image {what} is empty (0 bytes)")
    return _decode(io.BytesIO(data), what)


def _read_file(path: Path) -> Image.Image:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise EdgeVLMError(f"image not found: {path}") from None
    except OSError as exc:  # a symlink loop, no permission on a folder, a path through a file
        raise EdgeVLMError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    _require_regular_file(path, info.st_mode)
    if info.st_size == 0:
        raise EdgeVLMError(f"image {path} is empty (0 bytes)")
    try:
        # O_NONBLOCK: should the path become a FIFO after the stat, opening it still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise EdgeVLMError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as file:
        _require_regular_file(path, os.fstat(fd).st_mode)  # what was opened, not what the path named a moment ago
        image = _decode(file, str(path))
    image.filename = str(path)  # PIL's own attribute (empty for an open file object): later errors can name the file
    return image


def _require_regular_file(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise EdgeVLMError(f"expected an image file but got a directory: {path}")
    raise EdgeVLMError(f"image {path} is {file_kind(mode)}, not a regular file: give a picture file")


def _decode(file, what: str) -> Image.Image:
    """Open (header only), check the size, then decode the first frame. PIL raises assorted exception types on damaged
    data (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, ...): every one is the file's fault
    here, so all become one line naming the file."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file, formats=_SAFE_FORMATS())
    except Image.DecompressionBombError as exc:  # over PIL's own hard limit (or a limit the caller set on PIL)
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
        if pixels is None or pixels <= MAX_IMAGE_PIXELS:  # PIL's limit was lowered below ours by someone
            raise EdgeVLMError(f"image {what} is refused by PIL: {_reason(exc)}") from exc
        raise EdgeVLMError(f"image {what} is too large: {pixels:,} pixels, over the bound of {MAX_IMAGE_PIXELS:,} "
                           "(a decompression bomb, or a picture to downscale first)") from exc
    except UnidentifiedImageError as exc:
        raise EdgeVLMError(f"cannot read image {what}: not a picture in a format PIL reads") from exc
    except Exception as exc:
        raise EdgeVLMError(f"cannot read image {what}: {_reason(exc)}") from exc
    check_pixels(image.size, what)
    try:
        image.load()
    except Exception as exc:
        raise EdgeVLMError(f"cannot read image {what}: {_reason(exc)}") from exc
    return image


def _SAFE_FORMATS() -> list[str]:  # noqa: N802 - reads like the constant it is, computed once PIL's plugins load
    """Every format PIL reads except EPS: PIL hands EPS files to Ghostscript, an interpreter that a picture from
    the outside world has no business running. No camera or data set uses EPS."""
    Image.init()
    return [name for name in Image.OPEN if name != "EPS"]


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the library put in its message
    return text or type(exc).__name__


def check_pixels(size: tuple[int, int], what: str) -> None:
    """Refuse a picture with no pixels or more than MAX_IMAGE_PIXELS (from its header, before it is decoded)."""
    width, height = size
    if width <= 0 or height <= 0:
        raise EdgeVLMError(f"image {what} has no pixels ({width} x {height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise EdgeVLMError(f"image {what} is too large: {width} x {height} = {width * height:,} pixels, over the "
                           f"bound of {MAX_IMAGE_PIXELS:,} (a decompression bomb, or a picture to downscale first)")


def _checked_pil(image: Image.Image) -> Image.Image:
    what = _describe(image)
    check_pixels(image.size, what)
    try:
        image.load()  # a lazily opened image decodes here, so a damaged one fails with one line
    except Exception as exc:
        raise EdgeVLMError(f"cannot read image {what}: {_reason(exc)}") from exc
    return image


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise EdgeVLMError(f"image array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.size == 0:
        raise EdgeVLMError(f"image array is empty (shape {array.shape})")
    check_pixels((array.shape[1], array.shape[0]), f"array of shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype == np.uint16:
        array = _scale_to_8bit(array, 65535.0)  # as a 16-bit file is read (to_rgb)
    elif array.dtype != np.uint8:
        raise EdgeVLMError(f"image array dtype {array.dtype} is not supported (use uint8, uint16 or float in [0, 1])")
    return Image.fromarray(array)


# ------------------------------------------------------------------------------------------------ RGB


def _scale_to_8bit(data: np.ndarray, top: float) -> np.ndarray:
    """[0, top] -> [0, 255], rounded to nearest; values outside are clipped."""
    return np.clip(data.astype(np.float64) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, as `image.convert("RGB")` does it: that is how LLaVA read every training picture, so
    alpha is dropped (transparent pixels keep the colour they store), palette transparency is ignored, CMYK and
    grayscale use PIL's formulas, and no EXIF rotation is applied.

    One deliberate difference, where PIL's conversion saturates: 16-bit pictures (I;16*, and 32-bit I holding values
    above 255) are scaled from [0, 65535] to [0, 255], and float pictures (F) within [0, 1] from [0, 1], rounded to
    nearest; PIL would clip them to 255 (16-bit) or to 0 and 1 (float), losing the picture.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        image = Image.fromarray(_scale_to_8bit(np.asarray(image), 65535.0))
    elif mode == "I" and np.asarray(image).max() > 255:
        image = Image.fromarray(_scale_to_8bit(np.asarray(image), 65535.0))
    elif mode == "F" and np.asarray(image).max() <= 1.0:
        image = Image.fromarray(_scale_to_8bit(np.asarray(image), 1.0))
    if "transparency" in image.info:
        # The RGB pixels do not depend on it. Dropping it keeps PIL's advice about palette transparency off stderr,
        # and keeps the key off the result (transformers' processor would composite such an RGB image on white).
        image = image.copy()
        del image.info["transparency"]
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as exc:  # a mode PIL cannot convert (premultiplied La, ...)
        raise EdgeVLMError(f"cannot convert an image of mode {image.mode} to RGB: {exc}") from exc


def check_geometry(size: tuple[int, int], config: ImageConfig, what: str) -> None:
    """Refuse a picture whose padded square (pad) or resized picture (square) would exceed MAX_IMAGE_PIXELS: a long,
    thin picture is small on disk, yet its padded square is its long side squared."""
    width, height = size
    if config.aspect == "pad":
        side = max(width, height)
        big = (side, side)
    else:
        short, long = min(width, height), max(width, height)
        big = (config.image_size, int(config.image_size * long / short))
    if big[0] * big[1] > MAX_IMAGE_PIXELS:
        raise EdgeVLMError(f"image {what} ({width} x {height}) would become {big[0]} x {big[1]} pixels in "
                           f"{config.aspect!r} preprocessing, over the bound of {MAX_IMAGE_PIXELS:,}: crop it first")


def _describe(image: ImageInput) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, np.ndarray):
        return f"array of shape {image.shape}"
    return getattr(image, "filename", "") or f"(a PIL {getattr(image, 'mode', '?')} image)"


def read_rgb(image: ImageInput, config: ImageConfig | None = None) -> Image.Image:
    """The picture as 8-bit RGB, checked to fit `config`'s preprocessing: every check of `preprocess` without the
    resize (what `edge-vlm data validate` runs on every training picture)."""
    config = config or ImageConfig()
    rgb = to_rgb(load_image(image))
    check_geometry(rgb.size, config, _describe(image))
    return rgb


# ------------------------------------------------------------------------------------------------ CLIP steps


def expand_to_square(image: Image.Image, color: tuple[int, int, int] = PAD_COLOR) -> Image.Image:
    """LLaVA's `pad` mode: centre the image on a square canvas of the mean colour."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _resize_shortest_edge(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    return image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)


def _center_crop(array: np.ndarray, size: int) -> np.ndarray:
    height, width = array.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    if top >= 0 and left >= 0:
        return array[top : top + size, left : left + size]
    # smaller than the crop (cannot happen after a shortest-edge resize): pad with zeros, centred
    out = np.zeros((max(size, height), max(size, width), array.shape[2]), dtype=array.dtype)
    oy, ox = -(-(out.shape[0] - height) // 2), -(-(out.shape[1] - width) // 2)
    out[oy : oy + height, ox : ox + width] = array
    return _center_crop(out, size)


def preprocess(image: ImageInput, config: ImageConfig | None = None) -> np.ndarray:
    """One image -> float32 pixel values [3, S, S] (CLIP-normalised)."""
    config = config or ImageConfig()
    rgb = read_rgb(image, config)
    if config.aspect == "pad":
        rgb = expand_to_square(rgb)
    resized = _resize_shortest_edge(rgb, config.image_size)
    pixels = _center_crop(np.asarray(resized), config.image_size)
    pixels = pixels.astype(np.float32) * np.float32(1 / 255)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def preprocess_batch(images: list[ImageInput], config: ImageConfig | None = None) -> np.ndarray:
    """Several images -> float32 [B, 3, S, S]."""
    return np.stack([preprocess(image, config) for image in images])
