"""Image / CompressedImage conversion on REAL CDR messages: built with rosbags' typestore, serialised to CDR bytes
and deserialised again (what a bag or the wire carries), then converted. References: the original pixels, OpenCV's
colour conversions and encoders."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from edge_vlm.errors import EdgeVLMError
from edge_vlm.stream.rosmsg import (
    compressed_msg_to_rgb8,
    encode_compressed,
    image_msg_to_array,
    image_msg_to_rgb8,
    ns_to_stamp,
    rgb8_to_image_fields,
    stamp_to_ns,
)

STORE = get_typestore(Stores.ROS2_HUMBLE)
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
RNG = np.random.default_rng(0)


def header(stamp_ns: int = 1_700_000_001_000_000_123, frame_id: str = "cam"):
    sec, nanosec = divmod(stamp_ns, 10**9)
    return STORE.types["std_msgs/msg/Header"](stamp=STORE.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                              frame_id=frame_id)


def over_the_wire(msg, typename: str):
    """Serialise to CDR and back, as a subscriber / bag reader gets it."""
    return STORE.deserialize_cdr(bytes(STORE.serialize_cdr(msg, typename)), typename)


def image_msg(raw: np.ndarray, encoding: str, bigendian: bool = False, pad: int = 0):
    """An Image from an HxW[xC] array in the encoding's layout (row padding `pad` bytes)."""
    height, width = raw.shape[:2]
    if bigendian:
        raw = raw.astype(raw.dtype.newbyteorder(">"))
    rows = np.ascontiguousarray(raw).view(np.uint8).reshape(height, -1)
    step = rows.shape[1] + pad
    data = np.zeros((height, step), np.uint8)
    data[:, : rows.shape[1]] = rows
    msg = STORE.types[IMAGE](header=header(), height=height, width=width, encoding=encoding,
                             is_bigendian=int(bigendian), step=step, data=data.reshape(-1))
    return over_the_wire(msg, IMAGE)


RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding,raw", [
    ("rgb8", RGB),
    ("bgr8", RGB[..., ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 77, np.uint8)])),
    ("bgra8", np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 77, np.uint8)])),
    ("8UC3", RGB),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_give_the_original_rgb(encoding, raw, pad):
    np.testing.assert_array_equal(image_msg_to_rgb8(image_msg(raw, encoding, pad=pad)), RGB)


def test_mono8_is_replicated():
    gray = RGB[..., 0]
    out = image_msg_to_rgb8(image_msg(gray, "mono8"))
    np.testing.assert_array_equal(out, np.dstack([gray] * 3))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_16_bit_keeps_its_values_in_either_byte_order(encoding, bigendian):
    values = RNG.integers(1, 65536, (4, 6), dtype=np.uint16)
    msg = image_msg(values, encoding, bigendian=bigendian, pad=2)
    np.testing.assert_array_equal(image_msg_to_array(msg), values)


def test_mono16_scales_and_depth_stretches():
    values = np.array([[0, 65535], [257 * 100, 257 * 200]], np.uint16)
    out = image_msg_to_rgb8(image_msg(values, "mono16"))
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [100, 200]])
    # depth (16UC1): 0 is "no return" -> black; valid values stretched to 0..255 over their own range
    depth = np.array([[0, 1000], [1500, 2000]], np.uint16)
    out = image_msg_to_rgb8(image_msg(depth, "16UC1"))
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [128, 255]])


def test_32fc1_depth_ignores_nan():
    depth = np.array([[np.nan, 1.0], [2.0, 3.0]], np.float32)
    out = image_msg_to_rgb8(image_msg(depth, "32FC1"))
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [128, 255]])


@pytest.mark.parametrize("encoding,code", [("yuv422", cv2.COLOR_YUV2RGB_UYVY),
                                           ("yuv422_yuy2", cv2.COLOR_YUV2RGB_YUY2)])
def test_yuv422_matches_opencv(encoding, code):
    packed = RNG.integers(16, 236, (6, 8, 2), dtype=np.uint8)
    ours = image_msg_to_rgb8(image_msg(packed, encoding))
    reference = cv2.cvtColor(packed, code)
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 2


def test_bad_messages_are_refused_with_the_reason():
    with pytest.raises(EdgeVLMError, match="bayer"):
        image_msg_to_rgb8(image_msg(RGB[..., 0], "bayer_rggb8"))
    short = STORE.types[IMAGE](header=header(), height=4, width=4, encoding="rgb8", is_bigendian=0, step=12,
                               data=np.zeros(20, np.uint8))
    with pytest.raises(EdgeVLMError, match="need"):
        image_msg_to_rgb8(over_the_wire(short, IMAGE))
    narrow = STORE.types[IMAGE](header=header(), height=2, width=4, encoding="rgb8", is_bigendian=0, step=8,
                                data=np.zeros(16, np.uint8))
    with pytest.raises(EdgeVLMError, match="step"):
        image_msg_to_rgb8(over_the_wire(narrow, IMAGE))


def compressed_msg(fmt: str, data: np.ndarray):
    return over_the_wire(STORE.types[COMPRESSED](header=header(), format=fmt, data=data.reshape(-1)), COMPRESSED)


def test_compressed_png_and_jpeg_from_opencv():
    columns, rows = np.meshgrid(np.linspace(0, 255, 32), np.linspace(0, 255, 24))
    smooth = np.dstack([rows, columns, np.full((24, 32), 90.0)]).astype(np.uint8)
    ok, png = cv2.imencode(".png", smooth[..., ::-1])  # image_transport encodes BGR with OpenCV
    np.testing.assert_array_equal(compressed_msg_to_rgb8(compressed_msg("bgr8; png compressed bgr8", png)), smooth)
    ok, jpeg = cv2.imencode(".jpg", smooth[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = compressed_msg_to_rgb8(compressed_msg("rgb8; jpeg compressed bgr8", jpeg))
    assert np.abs(decoded.astype(int) - smooth.astype(int)).mean() < 3


def test_compressed_depth_png_with_its_header():
    depth = np.array([[0, 1000], [1500, 2000]], np.uint16)
    ok, png = cv2.imencode(".png", depth)
    data = np.concatenate([np.zeros(12, np.uint8), png.reshape(-1)])  # 12-byte ConfigHeader first
    out = compressed_msg_to_rgb8(compressed_msg("16UC1; compressedDepth png", data))
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [128, 255]])


def test_garbage_compressed_data_is_refused():
    with pytest.raises(EdgeVLMError, match="cannot read image .CompressedImage"):
        compressed_msg_to_rgb8(compressed_msg("jpeg", np.arange(50, dtype=np.uint8)))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_outgoing_image_fields_decode_with_opencv_semantics(encoding):
    fields = rgb8_to_image_fields(RGB, encoding)
    msg = over_the_wire(STORE.types[IMAGE](header=header(), **fields), IMAGE)
    raw = image_msg_to_array(msg)
    if encoding == "bgr8":
        np.testing.assert_array_equal(raw, cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    elif encoding == "mono8":
        assert np.abs(raw.astype(int) - cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY).astype(int)).max() <= 1
    else:
        np.testing.assert_array_equal(raw, RGB)


def test_encode_compressed_round_trip():
    fmt, data = encode_compressed(RGB, "png")
    np.testing.assert_array_equal(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1], RGB)
    np.testing.assert_array_equal(compressed_msg_to_rgb8(compressed_msg(fmt, data)), RGB)


def test_stamps_round_trip_through_cdr():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_700_000_001_000_000_123):
        msg = over_the_wire(STORE.types[IMAGE](header=header(ns), **rgb8_to_image_fields(RGB)), IMAGE)
        assert stamp_to_ns(msg.header.stamp) == ns
        assert ns_to_stamp(ns) == (msg.header.stamp.sec, msg.header.stamp.nanosec)
