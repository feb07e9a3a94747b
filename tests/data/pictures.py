"""Damaged and hostile picture files, generated on the spot (the tests check in no fixture file).

The decompression bomb is a PNG written byte by byte from the format's specification (signature, IHDR, IDAT, IEND
with their CRCs): its header claims a huge picture while the file is a few dozen bytes, so a reader that decoded
before checking the size would try to allocate it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG whose IHDR says width x height (1-bit grayscale by default) with an empty image stream."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth RGB picture (gradients plus a little noise): compresses like a photo, so truncation hits the data."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def write_damaged(folder: Path) -> dict[str, Path]:
    """One file per kind of damaged picture -> {kind: path}; each is refused with a one-line error."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def put(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    good = photo()
    good.save(folder / "whole.jpg", quality=90)
    good.save(folder / "whole.png")
    jpeg, png = (folder / "whole.jpg").read_bytes(), (folder / "whole.png").read_bytes()
    files["truncated_jpeg"] = put("truncated.jpg", jpeg[: len(jpeg) // 2])
    files["truncated_png"] = put("truncated.png", png[: len(png) // 2])
    files["empty"] = put("empty.png", b"")
    files["text"] = put("notes.jpg", b"this is not a picture\n" * 4)
    files["bomb"] = put("bomb.png", png_claiming(30_000, 30_000))
    (folder / "whole.jpg").unlink()
    (folder / "whole.png").unlink()
    return files
