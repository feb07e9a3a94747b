"""Pictures in chat requests: an `image_url` part -> bytes (data URL, or http(s) when allowed) -> a decoded picture.

Limits are checked before the expensive step each guards: the encoded size before base64 decoding, the pixel count
from the header before decompressing (a small PNG can claim 100 000 x 100 000 pixels), and only JPEG and PNG are
decoded. The picture is decoded as `edge-vlm ask` decodes a file (PIL, fully loaded), so both see the same pixels.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from edge_vlm.serve.errors import APIError, bad_request

FORMATS = ("JPEG", "PNG")
_MIME_TYPES = ("image/jpeg", "image/jpg", "image/png")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    allow_remote: bool = False
    remote_timeout_s: float = 10.0


@dataclass
class ImageBlob:
    """An image as sent: its bytes, their sha256 (the key of the prefix cache) and, once decoded, the picture."""

    data: bytes
    digest: str
    picture: Image.Image | None = None


def blob(data: bytes) -> ImageBlob:
    return ImageBlob(data, hashlib.sha256(data).hexdigest())


def url_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    """The bytes behind an image_url: a base64 data URL, or an http(s) URL with `allow_remote`. Local paths and other
    schemes are refused: a server must not read its own files on a client's behalf."""
    head = url[:16].lower()
    if head.startswith("data:"):
        return _data_url_bytes(url, limits, param)
    if head.startswith(("http://", "https://")):
        if not limits.allow_remote:
            raise bad_request("remote image URLs are refused by this server: send the picture as a data URL "
                              "(data:image/jpeg;base64,...) or start it with --allow-remote-images", param,
                              "remote_images_disabled")
        return _fetch(url, limits, param)
    raise bad_request("image_url must be a data URL (data:image/jpeg;base64,... or data:image/png;base64,...); "
                      "local paths and other URL schemes are refused", param, "invalid_image_url")


def _data_url_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise bad_request("the data URL has no ',' before its data", param, "invalid_image_url")
    fields = [f.strip().lower() for f in header[len("data:"):].split(";")]
    if "base64" not in fields[1:]:
        raise bad_request("the data URL must be base64-encoded (data:image/png;base64,...)", param,
                          "invalid_image_url")
    if fields[0] not in _MIME_TYPES:
        raise bad_request(f"image type {fields[0] or '(none)'!r} is not accepted: send image/jpeg or image/png",
                          param, "unsupported_image_type")
    # 4 base64 characters carry 3 bytes: refuse before decoding anything
    if (len(payload) // 4) * 3 > limits.max_bytes + 3:
        raise too_large(limits, param)
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"the image's base64 data is damaged: {exc}", param, "invalid_image") from None
    if len(data) > limits.max_bytes:
        raise too_large(limits, param)
    if not data:
        raise bad_request("the data URL holds no image data", param, "invalid_image")
    return data


def too_large(limits: ImageLimits, param: str | None) -> APIError:
    return APIError(413, f"the image is larger than this server's limit of {limits.max_bytes} bytes "
                         "(--max-image-bytes)", code="image_too_large", param=param)


def _fetch(url: str, limits: ImageLimits, param: str) -> bytes:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "edge-vlm-serve"})
    try:
        with urllib.request.urlopen(request, timeout=limits.remote_timeout_s) as response:  # noqa: S310 - http(s) only
            data = response.read(limits.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise bad_request(f"cannot fetch the image {url[:200]}: {exc}", param, "image_fetch_failed") from None
    if len(data) > limits.max_bytes:
        raise too_large(limits, param)
    return data


def decode(data: bytes, limits: ImageLimits, param: str | None = None) -> Image.Image:
    """The decoded picture, or a 400 naming what is wrong (not an image, not JPEG/PNG, too many pixels, damaged)."""
    try:
        picture = Image.open(io.BytesIO(data))
    except (Image.UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise bad_request(f"the image cannot be decoded: {exc}", param, "invalid_image") from None
    if picture.format not in FORMATS:
        raise bad_request(f"the image is {picture.format}: send JPEG or PNG", param, "unsupported_image_type")
    width, height = picture.size
    if width * height > limits.max_pixels:
        raise bad_request(f"the image has {width}x{height} pixels, over this server's limit of {limits.max_pixels} "
                          "(--max-image-pixels)", param, "image_too_large")
    try:
        picture.load()  # decode now: a truncated file fails here, in the request, not later in the model thread
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise bad_request(f"the image cannot be decoded: {exc}", param, "invalid_image") from None
    return picture
