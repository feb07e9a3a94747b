"""rosbag2 replay: a frame source over a bag's image topic, and a writer for the answers as a new bag.

Both go through the `rosbags` library (the `ros` extra), so no ROS install is needed. Reading uses rosbags'
AnyReader, which takes the message definitions stored in the bag (any distro), falling back to the ROS 2 LTS
typestore for bags without them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edge_vlm.errors import EdgeVLMError
from edge_vlm.fileio import check_output_parent
from edge_vlm.stream.rosmsg import compressed_msg_to_rgb8, image_msg_to_rgb8, result_json, stamp_to_ns
from edge_vlm.stream.source import BadFrame, EndOfStream, FrameSource, Grabbed

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ANSWER_TOPIC = "/edge_vlm/answer"
RESULT_TOPIC = "/edge_vlm/result"
STRING_TYPE = "std_msgs/msg/String"


def _rosbags():
    from edge_vlm.deps import require

    require("rosbags")
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    return AnyReader, Writer, Stores, get_typestore


def image_topics(path: str | Path) -> dict[str, str]:
    """topic -> message type for every Image / CompressedImage topic of a bag."""
    any_reader, _, stores, get_typestore = _rosbags()
    with any_reader([Path(path)], default_typestore=get_typestore(stores.LATEST)) as reader:
        return {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}


class BagSource(FrameSource):
    """The images of one topic of a rosbag2 (or ROS 1) bag, paced by the bag's log time (realtime) or read one by
    one (lossless). Frames carry the message's header stamp and frame_id; `topic` may be left out when the bag has
    exactly one image topic."""

    def __init__(self, path: str | Path, topic: str | None = None, **kwargs):
        path = Path(path)
        if not path.exists():
            raise EdgeVLMError(f"bag not found: {path}")
        if path.is_dir() and not (path / "metadata.yaml").is_file():
            raise EdgeVLMError(f"{path} is not a rosbag2 directory (no metadata.yaml)")
        super().__init__(f"bag:{path}", **kwargs)
        self.path = path
        self.topic = topic
        self.msgtype: str | None = None
        self._reader = None
        self._messages = None

    def _open(self) -> None:
        any_reader, _, stores, get_typestore = _rosbags()
        try:
            reader = any_reader([self.path], default_typestore=get_typestore(stores.LATEST))
            reader.open()
        except Exception as exc:  # rosbags raises several unrelated types for a corrupt bag
            raise EdgeVLMError(f"cannot open bag {self.path}: {type(exc).__name__}: {exc}") from exc
        found = {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}
        topic = self.topic
        if topic is None:
            if len(found) != 1:
                reader.close()
                listing = ", ".join(sorted(found)) or "none"
                raise EdgeVLMError(f"bag {self.path} has {len(found)} image topics ({listing}): choose one with "
                                   "--topic")
            topic = next(iter(found))
        elif topic not in found:
            all_topics = {c.topic: c.msgtype for c in reader.connections}
            reader.close()
            detail = f"it is {all_topics[topic]}" if topic in all_topics else "no such topic"
            raise EdgeVLMError(f"topic {topic} in {self.path} is not an image topic ({detail}); image topics: "
                               f"{', '.join(sorted(found)) or 'none'}")
        self.topic, self.msgtype = topic, found[topic]
        connections = [c for c in reader.connections if c.topic == topic]
        count = sum(c.msgcount for c in connections)
        duration_s = max(1e-9, (reader.end_time - reader.start_time) / 1e9)
        self.nominal_fps = count / duration_s if count > 1 else 10.0
        self._reader = reader
        self._messages = reader.messages(connections=connections)

    def _grab(self) -> Grabbed:
        if self._messages is None:
            raise EndOfStream(self.name)
        item = next(self._messages, None)
        if item is None:
            raise EndOfStream(self.name)
        connection, log_time_ns, raw = item
        try:
            msg = self._reader.deserialize(raw, connection.msgtype)
            if connection.msgtype.endswith("CompressedImage"):
                image = compressed_msg_to_rgb8(msg)
            else:
                image = image_msg_to_rgb8(msg)
        except Exception as exc:  # a damaged message is one bad frame: skipped and counted, the bag goes on
            raise BadFrame(f"{self.topic} message logged at {log_time_ns} ns: {type(exc).__name__}: {exc}") from exc
        stamp_ns = stamp_to_ns(msg.header.stamp)
        return Grabbed(image=image, stamp_ns=stamp_ns, media_time_s=log_time_ns / 1e9,
                       frame_id=str(msg.header.frame_id), meta={"log_time_ns": log_time_ns, "topic": self.topic})

    def _close(self) -> None:
        if self._reader is not None:
            self._messages = None
            self._reader.close()
            self._reader = None


class BagAnswerWriter:
    """Writes answers into a NEW rosbag2 (sqlite3): std_msgs/String on `answer_topic` (the text) and on
    `result_topic` (the JSON result with the source frame's header stamp and the latencies).

    Each message's log time is the source stamp plus the frame age at answer: the moment on the source's own
    timeline when the answer existed, so a replay lines answers up behind their images. The bag is written to a
    temporary directory beside `path` and renamed into place on close (an interrupted run leaves no half bag)."""

    def __init__(self, path: str | Path, answer_topic: str = ANSWER_TOPIC, result_topic: str = RESULT_TOPIC):
        self.path = Path(path)
        if self.path.exists():
            raise EdgeVLMError(f"output bag {self.path} already exists: choose a new path (bags are never "
                               "overwritten)")
        check_output_parent(self.path, "output bag")
        _, writer_cls, stores, get_typestore = _rosbags()
        self.typestore = get_typestore(stores.LATEST)
        self._string = self.typestore.types[STRING_TYPE]
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._writer = writer_cls(self._tmp / self.path.name, version=8)  # the oldest rosbags writes
        self._writer.open()
        self._answer = self._writer.add_connection(answer_topic, STRING_TYPE, typestore=self.typestore)
        self._result = self._writer.add_connection(result_topic, STRING_TYPE, typestore=self.typestore)
        self.count = 0

    def write(self, result) -> None:
        log_time = int(result.stamp_ns + result.frame_age_ms * 1e6)
        for connection, text in ((self._answer, result.text), (self._result, result_json(result))):
            raw = self.typestore.serialize_cdr(self._string(data=text), STRING_TYPE)
            self._writer.write(connection, log_time, raw)
        self.count += 1

    def close(self) -> None:
        """Finish the bag and move it into place."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        (self._tmp / self.path.name).rename(self.path)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def abort(self) -> None:
        """Drop the unfinished bag."""
        self._writer = None
        shutil.rmtree(self._tmp, ignore_errors=True)

