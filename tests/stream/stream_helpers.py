"""Helpers for the stream tests: a slow stand-in engine (it tests the runner's policy, not a model), video files,
an MJPEG-over-HTTP camera server, and rosbag2 bags written with `rosbags`."""

from __future__ import annotations

import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np


class SlowEngine:
    """Implements the Engine protocol with fixed delays. Its answer names the frame's mean red value, so a test can
    tell which frame an answer is about."""

    num_image_tokens = 1
    context_length = 512

    def __init__(self, prepare_s: float = 0.0, token_s: float = 0.0, tokens: int = 3):
        self.prepare_s = prepare_s
        self.token_s = token_s
        self.tokens = tokens
        self.prepare_calls = 0
        self.stream_calls = 0

    def prepare_image(self, image):
        self.prepare_calls += 1
        time.sleep(self.prepare_s)
        return {"red": float(np.asarray(image)[..., 0].mean())}

    def stream(self, prepared, question, history=None, config=None):
        self.stream_calls += 1
        yield f" red={prepared['red']:.0f}"
        for i in range(self.tokens - 1):
            time.sleep(self.token_s)
            yield f" t{i}"


def write_video(path: Path, colours: list[tuple[int, int, int]], fps: float = 10.0, size=(64, 48)) -> Path:
    """A video with one flat RGB colour per frame (mp4v for .mp4, MJPG for .avi: H.264 cannot be written)."""
    import cv2

    fourcc = {".mp4": "mp4v", ".avi": "MJPG"}[path.suffix]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for rgb in colours:
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:] = rgb[::-1]  # OpenCV writes BGR
        writer.write(frame)
    writer.release()
    return path


class MjpegServer:
    """An IP-camera stand-in: multipart/x-mixed-replace JPEG frames over HTTP, whose frames count up in the red
    channel. `kill()` cuts every connection and stops listening; `start()` serves again on the same port."""

    def __init__(self, fps: float = 50.0):
        self.fps = fps
        self.port = 0
        self.frames_sent = 0
        self._server = None
        self._alive = threading.Event()

    def start(self) -> MjpegServer:
        import cv2

        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while owner._alive.is_set():
                        frame = np.zeros((48, 64, 3), np.uint8)
                        frame[..., 2] = (owner.frames_sent * 7) % 256  # red in BGR
                        ok, jpeg = cv2.imencode(".jpg", frame)
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpeg))
                        self.wfile.write(jpeg.tobytes() + b"\r\n")
                        owner.frames_sent += 1
                        time.sleep(1 / owner.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._alive.set()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def kill(self) -> None:
        self._alive.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def write_image_bag(path: Path, frames: list[np.ndarray], topic: str = "/camera/image_raw", compressed_topic=None,
                    start_ns: int = 1_700_000_000_123_456_789, period_ns: int = 50_000_000,
                    encoding: str = "bgr8", corrupt: frozenset[int] = frozenset()) -> list[int]:
    """A rosbag2 with sensor_msgs/Image (and optionally CompressedImage) messages of `frames` (RGB uint8), written
    with rosbags' own writer and typestore. Returns the header stamps (ns). The messages at the indices in `corrupt`
    are damaged: the Image one says 4x its real height, the CompressedImage one holds garbage instead of a PNG."""
    import cv2
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    image_t, compressed_t = store.types["sensor_msgs/msg/Image"], store.types["sensor_msgs/msg/CompressedImage"]
    header_t, time_t = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    stamps = []
    with Writer(path, version=8) as writer:
        raw_conn = writer.add_connection(topic, image_t.__msgtype__, typestore=store)
        comp_conn = (writer.add_connection(compressed_topic, compressed_t.__msgtype__, typestore=store)
                     if compressed_topic else None)
        for index, rgb in enumerate(frames):
            stamp = start_ns + index * period_ns
            stamps.append(stamp)
            header = header_t(stamp=time_t(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="camera_optical")
            pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
            height = rgb.shape[0] * (4 if index in corrupt else 1)
            msg = image_t(header=header, height=height, width=rgb.shape[1], encoding=encoding,
                          is_bigendian=0, step=rgb.shape[1] * 3,
                          data=np.ascontiguousarray(pixels).reshape(-1))
            log_time = stamp + 2_000_000  # logged 2 ms after capture, as a recorder would
            writer.write(raw_conn, log_time, store.serialize_cdr(msg, image_t.__msgtype__))
            if comp_conn is not None:
                ok, png = cv2.imencode(".png", rgb[..., ::-1])
                if index in corrupt:
                    png = np.frombuffer(b"\x89PNG\r\n\x1a\n" + bytes(range(200)), np.uint8)
                cmsg = compressed_t(header=header, format="rgb8; png compressed bgr8", data=png.reshape(-1))
                writer.write(comp_conn, log_time, store.serialize_cdr(cmsg, compressed_t.__msgtype__))
    return stamps


def coloured_frames(count: int, size=(32, 24)) -> list[np.ndarray]:
    """Frames whose red channel encodes their index (10 * i) and green/blue are fixed."""
    frames = []
    for i in range(count):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[..., 0] = (10 * i) % 256
        frame[..., 1] = 100
        frame[..., 2] = 200
        frames.append(frame)
    return frames
