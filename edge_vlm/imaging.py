"""Image loading and CLIP preprocessing in numpy/PIL (no torch).

Shared by training (model/, data/) and deployment (runtime/), so both sides see identical pixels.
The steps follow transformers' `CLIPImageProcessorPil` exactly (a test compares them); the padding follows
LLaVA's `expand2square` (reference §5). Written here rather than calling transformers because the runtime
must not depend on transformers or torch.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edge_vlm.errors import EdgeVLMError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The CLIP mean as 8-bit RGB: the colour LLaVA pads with.
PAD_COLOR = (122, 116, 104)

ImageInput = str | os.PathLike | Image.Image | np.ndarray

ASPECT_MODES = ("pad", "square")


@dataclass
class ImageConfig:
    """How images become pixel values. `aspect` 'pad': pad to a square with the mean colour first (stage 2,
    most evaluations); 'square': CLIP's own resize + center crop (stage 1, ScienceQA, MM-Vet in LP)."""

    image_size: int = 336
    aspect: str = "pad"
    mean: tuple[float, ...] = field(default=CLIP_MEAN)
    std: tuple[float, ...] = field(default=CLIP_STD)

    def __post_init__(self):
        if self.aspect not in ASPECT_MODES:
            raise EdgeVLMError(f"image aspect mode {self.aspect!r} is not one of {ASPECT_MODES}")
        if self.image_size <= 0:
            raise EdgeVLMError(f"image_size must be positive, got {self.image_size}")
        self.mean = tuple(float(x) for x in self.mean)
        self.std = tuple(float(x) for x in self.std)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageConfig:
        known = {k: data[k] for k in ("image_size", "aspect", "mean", "std") if k in data}
        return cls(**known)


def load_image(image: ImageInput) -> Image.Image:
    """Open a path, PIL image or numpy array (HxW or HxWxC, uint8/uint16/float in [0,1]) as a decoded PIL image.

    Raises EdgeVLMError with the path for a missing file, a directory, or an unreadable / truncated image.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise EdgeVLMError(f"image not found: {path}")
        if path.is_dir():
            raise EdgeVLMError(f"expected an image file but got a directory: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()  # decode now: a truncated file fails here, not later in the model
                return opened.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise EdgeVLMError(f"cannot read image {path}: {exc}") from exc
    raise EdgeVLMError(f"unsupported image type {type(image).__name__}: give a path, a PIL image or a numpy array")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise EdgeVLMError(f"image array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.size == 0:
        raise EdgeVLMError("image array is empty")
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise EdgeVLMError(f"image array dtype {array.dtype} is not supported (use uint8, uint16 or float in [0, 1])")
    return Image.fromarray(array)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB. Transparency is composited onto white (as transformers does);
    16- and 32-bit images are scaled to 8 bits rather than clipped, so a full-range 16-bit image keeps its contrast."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or data.max() > 255 else 255.0
        if image.mode == "F":
            top = 1.0 if data.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(data / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


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
    rgb = to_rgb(load_image(image))
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
