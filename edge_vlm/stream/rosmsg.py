"""sensor_msgs/Image and CompressedImage <-> numpy, and ROS time stamps, with no ROS installed.

The functions read and write plain attributes (`height`, `width`, `encoding`, `step`, `data`, `header.stamp`...), so
they work on rclpy messages (the ROS 2 node) and on rosbags' message classes (bag replay, tests) alike.
Hand-written rather than cv_bridge because cv_bridge needs a ROS install and OpenCV; the encodings follow
sensor_msgs/image_encodings.hpp.
"""

from __future__ import annotations

import io
import json

import numpy as np

from edge_vlm.errors import EdgeVLMError

# encoding -> (numpy dtype, channels, channel order for colour images or None)
_NAMED = {
    "rgb8": ("u1", 3, "rgb"), "rgba8": ("u1", 4, "rgba"), "bgr8": ("u1", 3, "bgr"), "bgra8": ("u1", 4, "bgra"),
    "rgb16": ("u2", 3, "rgb"), "rgba16": ("u2", 4, "rgba"), "bgr16": ("u2", 3, "bgr"), "bgra16": ("u2", 4, "bgra"),
    "mono8": ("u1", 1, None), "mono16": ("u2", 1, None),
}
_GENERIC_DEPTHS = {"8U": "u1", "8S": "i1", "16U": "u2", "16S": "i2", "32S": "i4", "32F": "f4", "64F": "f8"}
_YUV422 = {"yuv422": "uyvy", "uyvy": "uyvy", "yuv422_yuy2": "yuyv", "yuyv": "yuyv"}


def encoding_layout(encoding: str) -> tuple[np.dtype, int, str | None]:
    """(dtype without byte order, channels, colour order) of a sensor_msgs encoding, or EdgeVLMError."""
    if encoding in _NAMED:
        kind, channels, order = _NAMED[encoding]
        return np.dtype(kind), channels, order
    for depth, kind in _GENERIC_DEPTHS.items():
        prefix = depth + "C"
        if encoding.startswith(prefix) and encoding[len(prefix):].isdigit():
            channels = int(encoding[len(prefix):])
            if 1 <= channels <= 4:
                return np.dtype(kind), channels, None
    supported = ", ".join([*_NAMED, "8UC1..64FC4", *_YUV422])
    raise EdgeVLMError(f"image encoding {encoding!r} is not supported (supported: {supported}); bayer images need "
                       "debayering upstream (image_proc)")


def _buffer(data) -> np.ndarray:
    """A message's uint8[] field as a flat uint8 array: bytes (rclpy), array.array, numpy (rosbags) or a list."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_msg_to_array(msg) -> np.ndarray:
    """A sensor_msgs/Image as its raw array: HxW (one channel) or HxWxC, dtype from the encoding, in native byte
    order. Row padding (`step` > width * pixel size) and big-endian data are handled."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    encoding = str(msg.encoding)
    raw = _buffer(msg.data)
    if encoding in _YUV422:
        row_bytes = width * 2
        return _rows(raw, height, step, row_bytes, encoding).reshape(height, width, 2)
    dtype, channels, _ = encoding_layout(encoding)
    dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    row_bytes = width * channels * dtype.itemsize
    rows = _rows(raw, height, step, row_bytes, encoding)
    array = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    array = array.astype(dtype.newbyteorder("="), copy=False)
    return array[..., 0] if channels == 1 else array


def _rows(raw: np.ndarray, height: int, step: int, row_bytes: int, encoding: str) -> np.ndarray:
    if height <= 0 or row_bytes <= 0:
        raise EdgeVLMError(f"image message has an empty size {height} rows x {row_bytes} bytes")
    if step < row_bytes:
        raise EdgeVLMError(f"image step {step} is smaller than a row of {encoding} ({row_bytes} bytes)")
    if raw.size < step * (height - 1) + row_bytes:
        raise EdgeVLMError(f"image data has {raw.size} bytes, {encoding} {height} rows of step {step} need "
                           f"{step * (height - 1) + row_bytes}")
    return np.lib.stride_tricks.as_strided(raw, shape=(height, row_bytes), strides=(step, 1))


def _yuv422_to_rgb(pairs: np.ndarray, layout: str) -> np.ndarray:
    """Packed 4:2:2 (HxWx2 bytes) -> RGB, BT.601 limited range (what V4L2 cameras send)."""
    flat = pairs.reshape(pairs.shape[0], -1, 4).astype(np.float32)  # one macropixel = 2 pixels
    if layout == "uyvy":
        u, y0, v, y1 = (flat[..., i] for i in range(4))
    else:
        y0, u, y1, v = (flat[..., i] for i in range(4))
    y = np.stack([y0, y1], axis=-1).reshape(pairs.shape[0], -1)
    u = np.repeat(u, 2, axis=1) - 128.0
    v = np.repeat(v, 2, axis=1) - 128.0
    c = (y - 16.0) * 1.164
    rgb = np.stack([c + 1.596 * v, c - 0.392 * u - 0.813 * v, c + 2.017 * u], axis=-1)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def to_display_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """A raw image array -> RGB uint8 HxWx3 for the model and recordings.

    Colour order is fixed (bgr -> rgb), alpha dropped, mono replicated. 16-bit colour / mono16 is scaled by
    255/65535. Depth-like single-channel data (16UC1, 32FC1, other generic types) is min-max normalised per frame
    over its finite, non-zero values (0 means 'no return' in depth images), so the scene's shape stays visible."""
    if encoding in _YUV422:
        return _yuv422_to_rgb(array, _YUV422[encoding])
    dtype, channels, order = encoding_layout(encoding)
    if array.ndim == 2:
        array = array[..., None]
    if order is not None or dtype == np.uint8 or encoding == "mono16":  # intensities: scale, never stretch
        out = array if array.dtype == np.uint8 else (array.astype(np.float32) * (255.0 / 65535.0) + 0.5)
        out = out.astype(np.uint8)
    else:  # depth-like (16UC1, 32FC1, ...): stretch per frame
        out = _normalise(array[..., :3] if channels >= 3 else array[..., :1])
    if order in ("bgr", "bgra"):
        out = out[..., [2, 1, 0]]
    elif out.shape[2] >= 3:
        out = out[..., :3]
    else:  # mono, or the first channel of a two-channel image
        out = np.repeat(out[..., :1], 3, axis=2)
    return np.ascontiguousarray(out)


def _normalise(values: np.ndarray) -> np.ndarray:
    data = values.astype(np.float64)
    valid = np.isfinite(data) & (data != 0)
    if not valid.any():
        return np.zeros(values.shape, np.uint8)
    low, high = data[valid].min(), data[valid].max()
    scale = 255.0 / (high - low) if high > low else 0.0
    out = np.where(valid, (data - low) * scale + (0.5 if scale else 255.0), 0.0)
    return np.clip(out, 0, 255).astype(np.uint8)


def image_msg_to_rgb8(msg) -> np.ndarray:
    """A sensor_msgs/Image -> RGB uint8 HxWx3 (see `to_display_rgb8`)."""
    return to_display_rgb8(image_msg_to_array(msg), str(msg.encoding))


# compressedDepth (image_transport's depth plugin) puts a 12-byte ConfigHeader (format enum + 2 float params)
# before the PNG; plain compressed images are the encoded file itself.
_COMPRESSED_DEPTH_HEADER = 12


def compressed_msg_to_rgb8(msg) -> np.ndarray:
    """A sensor_msgs/CompressedImage (jpeg / png, incl. compressedDepth) -> RGB uint8 HxWx3.

    image_transport encodes colour images in the file's own colour order (cv2.imencode of BGR), so decoding the
    file gives true RGB whatever 'rgb8; jpeg compressed bgr8' says."""
    from edge_vlm.imaging import decode_image_bytes, load_image, to_rgb

    raw = _buffer(msg.data).tobytes()
    fmt = str(getattr(msg, "format", "")).lower()
    if "compresseddepth" in fmt:
        raw = raw[_COMPRESSED_DEPTH_HEADER:]
    image = decode_image_bytes(raw, f"(CompressedImage, format {fmt!r}, {len(raw)} bytes)")
    if "compresseddepth" in fmt or image.mode.startswith("I"):
        return to_display_rgb8(np.asarray(image).astype(np.uint16), "16UC1")
    return np.asarray(to_rgb(load_image(image)))


def rgb8_to_image_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict:
    """Fields of a sensor_msgs/Image (without header) holding RGB uint8 `rgb` as rgb8, bgr8 or mono8."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise EdgeVLMError(f"expected RGB uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[..., ::-1]
    elif encoding == "mono8":
        pixels = np.asarray(_luma(rgb))
    else:
        raise EdgeVLMError(f"cannot write encoding {encoding!r}: use rgb8, bgr8 or mono8")
    pixels = np.ascontiguousarray(pixels)
    height, width = rgb.shape[:2]
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
            "step": width * (1 if pixels.ndim == 2 else 3), "data": pixels.reshape(-1)}


def _luma(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).convert("L"))


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> tuple[str, np.ndarray]:
    """RGB uint8 -> (CompressedImage.format, data) as image_transport's compressed plugin names it."""
    from PIL import Image

    fmt = fmt.lower()
    if fmt not in ("jpeg", "png"):
        raise EdgeVLMError(f"compressed format must be jpeg or png, got {fmt!r}")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG" if fmt == "jpeg" else "PNG", quality=quality)
    return f"rgb8; {fmt} compressed bgr8", np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) of a builtin_interfaces/Time (nanosec in [0, 1e9))."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return sec, nanosec


def stamp_dict(ns: int) -> dict:
    sec, nanosec = ns_to_stamp(ns)
    return {"sec": sec, "nanosec": nanosec}


def result_json(result, frame_id: str = "") -> str:
    """The JSON string published / written for one answer: the source frame's stamp and frame_id, the prompt, the
    answer and the latencies (see edge_vlm.stream.runner.StreamResult)."""
    record = result.to_dict()
    record["header"] = {"stamp": stamp_dict(result.stamp_ns), "frame_id": frame_id or result.frame_id}
    return json.dumps(record, ensure_ascii=False, sort_keys=True)
