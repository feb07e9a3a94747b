"""Fixtures of the stream tests (helpers live in stream_helpers.py)."""

from __future__ import annotations

import pytest
from stream_helpers import MjpegServer


@pytest.fixture
def mjpeg_server():
    server = MjpegServer().start()
    yield server
    server.kill()
