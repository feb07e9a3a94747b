"""The robot loop: frame sources, the latest-frame runner, sinks. No ROS, no cv2 at import time.

    from edge_vlm.stream import StreamRunner, open_source
    from edge_vlm.stream.engines import load_engine

    engine, _ = load_engine(model="checkpoints/tiny")
    with open_source("synthetic:30") as source:
        for result in StreamRunner(engine, source, ["What is moving?"], max_hz=2).results():
            print(f"{result.text!r} about a frame {result.frame_age_ms:.0f} ms old")
"""

from edge_vlm.stream.runner import PartialText, StreamResult, StreamRunner
from edge_vlm.stream.source import (
    EndOfStream,
    Frame,
    FrameSource,
    Grabbed,
    PushSource,
    ReconnectPolicy,
    SourceError,
)
from edge_vlm.stream.spec import open_source
from edge_vlm.stream.stats import summarize

__all__ = [
    "EndOfStream",
    "Frame",
    "FrameSource",
    "Grabbed",
    "PartialText",
    "PushSource",
    "ReconnectPolicy",
    "SourceError",
    "StreamResult",
    "StreamRunner",
    "open_source",
    "summarize",
]
