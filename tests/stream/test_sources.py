"""Each frame source against an independent reference: frames written with OpenCV / PIL / rosbags, and a real
HTTP MJPEG server for the network stream (which is also killed and restarted mid-run)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from stream_helpers import coloured_frames, write_image_bag, write_video

from edge_vlm.errors import EdgeVLMError
from edge_vlm.stream import EndOfStream, FrameSource, Grabbed, ReconnectPolicy, SourceError, open_source
from edge_vlm.stream.bag import BagSource
from edge_vlm.stream.file_sources import FolderSource, SyntheticSource, moving_scene_renderer
from edge_vlm.stream.opencv_sources import CameraSource, UrlSource, VideoFileSource
from edge_vlm.stream.source import BadFrame


def drain(source: FrameSource, timeout_s: float = 10.0) -> list:
    frames = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            frame = source.read_latest(timeout_s=1.0)
        except EndOfStream:
            return frames
        if frame is not None:
            frames.append(frame)
    raise AssertionError(f"{source.name} did not end within {timeout_s} s")


def test_import_edge_vlm_stream_pulls_no_heavy_modules():
    code = ("import sys, edge_vlm, edge_vlm.stream, edge_vlm.cli.stream; "
            "print([m for m in ('cv2', 'torch', 'rosbags', 'onnxruntime', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_video_file_lossless_gives_every_frame_then_end(tmp_path):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (20, 20, 20)]
    path = write_video(tmp_path / "clip.avi", colours)
    with VideoFileSource(path, playback="lossless") as source:
        frames = drain(source)
    assert len(frames) == len(colours)
    for frame, rgb in zip(frames, colours):
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        assert np.abs(frame.image.reshape(-1, 3).mean(0) - rgb).max() < 12  # MJPG is lossy
    assert [f.seq for f in frames] == list(range(len(colours)))
    assert source.stats.dropped == 0 and source.stats.captured == len(colours)


def test_video_file_realtime_follows_its_timeline(tmp_path):
    path = write_video(tmp_path / "clip.mp4", [(i * 20, 0, 0) for i in range(10)], fps=20.0)
    with open_source(str(path)) as source:  # a bare path with a video suffix
        assert isinstance(source, VideoFileSource) and source.nominal_fps == pytest.approx(20.0)
        start = time.monotonic()
        drain(source)
        elapsed = time.monotonic() - start
    assert elapsed >= 9 / 20.0 * 0.9  # 10 frames at 20 fps: at least ~0.45 s, not instant


def test_camera_through_a_video_file_stand_in_reconnects(tmp_path):
    """A camera is live: when frames stop (here: the file ends) it reopens the device with backoff and reports it."""
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    path = write_video(tmp_path / "camera.avi", colours)
    events = []
    source = CameraSource(str(path), reconnect=ReconnectPolicy(initial_s=0.01, max_s=0.02), on_event=events.append)
    seen = []
    with source:
        deadline = time.monotonic() + 10
        while source.stats.reconnects < 1 and time.monotonic() < deadline:
            frame = source.read_latest(timeout_s=0.5)
            if frame is not None:
                seen.append(frame)
    assert source.live and source.stats.reconnects >= 1
    assert [e["event"] for e in events][:2] == ["error", "recovered"]
    assert source.stats.captured > len(colours)  # frames kept coming after the reopen
    assert any(np.abs(f.image.reshape(-1, 3).mean(0) - colours[0]).max() < 12 for f in seen)


def test_url_stream_survives_server_death(mjpeg_server):
    """A real MJPEG-over-HTTP camera is killed mid-run: the source reports errors, keeps retrying, and recovers when
    the server returns on the same port — the failure is never fatal."""
    events = []
    source = open_source(mjpeg_server.url, reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.2),
                         on_event=events.append)
    assert isinstance(source, UrlSource)
    source.timeout_ms = 1000
    with source:
        assert source.read_latest(timeout_s=5) is not None
        mjpeg_server.kill()
        deadline = time.monotonic() + 10
        while source.stats.errors < 2 and time.monotonic() < deadline:
            source.read_latest(timeout_s=0.2)
        assert source.stats.errors >= 2, "the dead server was not noticed"
        mjpeg_server.start()
        deadline = time.monotonic() + 15
        while source.stats.reconnects < 1 and time.monotonic() < deadline:
            source.read_latest(timeout_s=0.2)
        assert source.stats.reconnects >= 1, [e["message"] for e in events]
        frame = source.read_latest(timeout_s=5)
    assert frame is not None and frame.image.shape == (48, 64, 3)
    kinds = [e["event"] for e in events]
    assert "error" in kinds and "recovered" in kinds and "gave_up" not in kinds


def test_folder_in_name_order_skipping_a_corrupt_file(tmp_path):
    frames = coloured_frames(4)
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(tmp_path / f"img_{i:03d}.png")
    (tmp_path / "img_001b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "notes.txt").write_text("not an image")
    events = []
    with open_source(f"folder:{tmp_path}", playback="lossless", on_event=events.append) as source:
        got = drain(source)
    assert len(got) == 4
    for frame, rgb in zip(got, frames):
        np.testing.assert_array_equal(frame.image, rgb)  # PNG is lossless
    assert [e["event"] for e in events] == ["skipped"] and "img_001b.png" in events[0]["message"]


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(EdgeVLMError, match="not found"):
        FolderSource(tmp_path / "missing")
    with pytest.raises(EdgeVLMError, match="no images"):
        FolderSource(tmp_path)


def test_synthetic_scene_moves_and_is_deterministic():
    with SyntheticSource(fps=10, size=(96, 64), max_frames=6, playback="lossless") as source:
        frames = drain(source)
    assert len(frames) == 6 and frames[0].image.shape == (64, 96, 3)
    assert all(not np.array_equal(a.image, b.image) for a, b in zip(frames, frames[1:]))  # it moves
    renderer = moving_scene_renderer()
    again = np.asarray(renderer(2 / 10, (96, 64)).convert("RGB"))
    np.testing.assert_array_equal(frames[2].image, again)  # frame k is the scene at t = k / fps


def test_synthetic_realtime_keeps_only_the_newest_frame():
    with open_source("synthetic:100", size=(32, 32)) as source:
        time.sleep(0.5)
        frame = source.read_latest(timeout_s=1)
        captured = source.stats.captured
    assert captured >= 20 and frame.seq >= captured - 3  # ~50 frames made, the one read is (nearly) the last
    assert source.stats.dropped >= captured - 3


class _FailingSource(FrameSource):
    """A file-like source whose grabs fail from frame 3 on (a disk error)."""

    def __init__(self, **kwargs):
        super().__init__("failing", **kwargs)
        self.count = 0

    def _grab(self):
        self.count += 1
        if self.count > 3:
            raise OSError("read error")
        return Grabbed(image=np.zeros((8, 8, 3), np.uint8))


def test_file_source_gives_up_after_its_retries_and_says_so():
    events = []
    source = _FailingSource(playback="lossless", reconnect=ReconnectPolicy(initial_s=0.01, max_retries=2),
                            on_event=events.append)
    with source:
        got = [source.read_latest(timeout_s=2) for _ in range(3)]
        assert all(f is not None for f in got)
        with pytest.raises(SourceError, match="read error"):
            source.read_latest(timeout_s=5)
    assert [e["event"] for e in events] == ["error", "error", "gave_up"]


def test_bag_source_reads_header_stamps_and_both_image_types(tmp_path):
    frames = coloured_frames(5)
    stamps = write_image_bag(tmp_path / "bag", frames, compressed_topic="/camera/image_raw/compressed")
    with pytest.raises(EdgeVLMError, match="2 image topics"):
        with open_source(f"bag:{tmp_path / 'bag'}"):
            pass
    with pytest.raises(EdgeVLMError, match="/camera/image_raw/compressed"):
        with open_source(f"bag:{tmp_path / 'bag'}", topic="/nope"):
            pass
    for topic in ("/camera/image_raw", "/camera/image_raw/compressed"):
        with open_source(str(tmp_path / "bag"), topic=topic, playback="lossless") as source:  # bare bag dir
            assert isinstance(source, BagSource)
            got = drain(source)
        assert [f.stamp_ns for f in got] == stamps
        assert all(f.frame_id == "camera_optical" for f in got)
        for frame, rgb in zip(got, frames):
            np.testing.assert_array_equal(frame.image, rgb)  # bgr8 and PNG both lossless


def test_bag_source_skips_runs_of_damaged_messages_and_counts_them(tmp_path):
    """Runs of 5 and 10 damaged messages between good ones (4 in a row used to end the replay with 'gave_up')."""
    frames = coloured_frames(20)
    corrupt = frozenset([*range(2, 7), *range(8, 18)])
    stamps = write_image_bag(tmp_path / "bag", frames, compressed_topic="/camera/image_raw/compressed",
                             corrupt=corrupt)
    good = [i for i in range(20) if i not in corrupt]
    for topic in ("/camera/image_raw", "/camera/image_raw/compressed"):
        events = []
        with open_source(f"bag:{tmp_path / 'bag'}", topic=topic, playback="lossless", on_event=events.append,
                         reconnect=ReconnectPolicy(initial_s=0.01, max_retries=3)) as source:
            got = drain(source)
        assert [f.stamp_ns for f in got] == [stamps[i] for i in good]
        for frame, i in zip(got, good):
            np.testing.assert_array_equal(frame.image, frames[i])
        assert source.stats.bad_frames == len(corrupt) and source.stats.errors == 0
        assert [e["event"] for e in events] == ["skipped"] * len(corrupt)


class _UndecodableSource(FrameSource):
    """A source whose frames all arrive damaged from grab `bad_from` on, every 10 ms; good again from `good_from`."""

    def __init__(self, bad_from=3, good_from=None, live=False, **kwargs):
        self.live = live
        super().__init__("undecodable", **kwargs)
        self.bad_from, self.good_from, self.calls, self.reopened = bad_from, good_from, 0, 0

    def _grab(self):
        self.calls += 1
        time.sleep(0.01)
        if self.calls > self.bad_from and (self.good_from is None or self.calls <= self.good_from):
            raise BadFrame(f"frame {self.calls} is damaged")
        return Grabbed(image=np.full((8, 8, 3), self.calls % 256, np.uint8))

    def _recover(self):
        self.reopened += 1


def test_a_short_stretch_of_undecodable_frames_is_skipped_not_a_failure():
    events = []
    source = _UndecodableSource(bad_from=3, good_from=30, playback="lossless", on_event=events.append,
                                reconnect=ReconnectPolicy(initial_s=0.01, max_retries=0, undecodable_s=5.0))
    with source:
        got = []
        while len(got) < 8:
            frame = source.read_latest(timeout_s=5)
            assert frame is not None
            got.append(frame)
    assert source.stats.bad_frames == 27 and source.stats.errors == 0
    assert {e["event"] for e in events} == {"skipped"}


def test_a_source_with_nothing_decodable_for_longer_than_its_window_fails_as_the_policy_says():
    events = []
    file_like = _UndecodableSource(bad_from=2, on_event=events.append, playback="lossless",
                                   reconnect=ReconnectPolicy(initial_s=0.01, max_retries=2, undecodable_s=0.3))
    with file_like:
        assert file_like.read_latest(timeout_s=5) is not None
        assert file_like.read_latest(timeout_s=5) is not None
        started = time.monotonic()
        with pytest.raises(SourceError, match="nothing decodable for"):
            while True:
                file_like.read_latest(timeout_s=5)
        assert time.monotonic() - started >= 0.3  # not before the window has passed
    kinds = [e["event"] for e in events]
    # each damaged frame is reported as skipped; past the window each is also a failure: 2 retries, then gave_up
    assert kinds.count("error") == 2 and kinds[-1] == "gave_up" and kinds.count("gave_up") == 1
    first_error = kinds.index("error")
    assert first_error >= 10 and set(kinds[:first_error]) == {"skipped"}  # ~30 skipped in the 0.3 s window
    # a live source reopens instead, and is flowing again once good frames come back
    live_events = []
    live = _UndecodableSource(bad_from=2, good_from=60, live=True, on_event=live_events.append,
                              reconnect=ReconnectPolicy(initial_s=0.01, max_s=0.02, undecodable_s=0.2))
    with live:
        deadline = time.monotonic() + 10
        while live.stats.reconnects < 1 and time.monotonic() < deadline:
            live.read_latest(timeout_s=0.2)
    assert live.reopened >= 1 and live.stats.reconnects == 1
    assert "gave_up" not in [e["event"] for e in live_events]


def test_a_folder_of_only_undecodable_files_fails_rather_than_ending(tmp_path):
    for i in range(4):
        (tmp_path / f"img_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with open_source(f"folder:{tmp_path}", playback="lossless") as source:
        with pytest.raises(SourceError, match="none of its 4 frame"):
            drain(source)
    assert source.stats.bad_frames == 4


def test_spec_strings():
    assert isinstance(open_source("0"), CameraSource)
    assert isinstance(open_source("camera:/dev/video9"), CameraSource)
    assert isinstance(open_source("rtsp://10.0.0.2/stream"), UrlSource)
    synthetic = open_source("synthetic:12.5")
    assert isinstance(synthetic, SyntheticSource) and synthetic.nominal_fps == 12.5
    with pytest.raises(EdgeVLMError, match="not found and not a known form"):
        open_source("nothing-here")
    with pytest.raises(EdgeVLMError, match="must be a number"):
        open_source("synthetic:fast")
    with pytest.raises(EdgeVLMError, match="video file not found"):
        open_source("video:/no/such.mp4")
    with pytest.raises(EdgeVLMError, match="live source"):
        open_source("0", playback="lossless")
    with pytest.raises(EdgeVLMError, match="only for bag sources"):
        open_source("synthetic", topic="/camera/image_raw")
