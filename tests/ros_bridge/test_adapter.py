"""The ROS node's logic without rclpy: parameters, the bridge core fed with real CDR-decoded messages, stamping of
the published results, the services' answers."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.typesys import Stores, get_typestore

BRIDGE = Path(__file__).resolve().parents[2] / "ros_bridge"
sys.path.insert(0, str(BRIDGE))

from edge_vlm_ros.adapter import (  # noqa: E402
    DEFAULTS,
    PARAMETER_NAMES,
    BridgeCore,
    NodeSettings,
    SettingsError,
    parse_prompt_message,
)

STORE = get_typestore(Stores.ROS2_HUMBLE)


class EchoEngine:
    """Answers with the mean red value of the frame, after a short delay (stands in for a model)."""

    def prepare_image(self, image):
        time.sleep(0.02)
        return float(np.asarray(image)[..., 0].mean())

    def stream(self, prepared, question, history=None, config=None):
        yield f"{question}: red={prepared:.0f}"


def cdr_image(red: int, stamp_ns: int, encoding: str = "bgr8"):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = red
    pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
    sec, nanosec = divmod(stamp_ns, 10**9)
    msg = STORE.types["sensor_msgs/msg/Image"](
        header=STORE.types["std_msgs/msg/Header"](stamp=STORE.types["builtin_interfaces/msg/Time"](sec=sec,
                                                                                                 nanosec=nanosec),
                                                  frame_id="front_camera"),
        height=6, width=8, encoding=encoding, is_bigendian=0, step=24, data=pixels.reshape(-1))
    raw = STORE.serialize_cdr(msg, "sensor_msgs/msg/Image")
    return STORE.deserialize_cdr(bytes(raw), "sensor_msgs/msg/Image")


def cdr_compressed(red: int, stamp_ns: int):
    import io

    from PIL import Image

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = red
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    sec, nanosec = divmod(stamp_ns, 10**9)
    msg = STORE.types["sensor_msgs/msg/CompressedImage"](
        header=STORE.types["std_msgs/msg/Header"](stamp=STORE.types["builtin_interfaces/msg/Time"](sec=sec,
                                                                                                 nanosec=nanosec),
                                                  frame_id="front_camera"),
        format="rgb8; png compressed bgr8", data=np.frombuffer(buffer.getvalue(), np.uint8))
    raw = STORE.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")
    return STORE.deserialize_cdr(bytes(raw), "sensor_msgs/msg/CompressedImage")


class Published:
    def __init__(self):
        self.answers, self.results, self.partials, self.warnings = [], [], [], []

    def core(self, **params) -> BridgeCore:
        settings = NodeSettings.from_params({"model_dir": "/unused", **params})
        return BridgeCore(EchoEngine(), settings, self.answers.append, self.results.append, self.partials.append,
                          log_warning=self.warnings.append)


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("transport", ["raw", "compressed"])
def test_results_carry_the_source_header_stamp(transport):
    pub = Published()
    core = pub.core(prompts=["colour?"], max_hz=0.0, image_transport=transport)
    core.start()
    try:
        stamp = 1_712_345_678_900_000_042
        message = cdr_image(120, stamp) if transport == "raw" else cdr_compressed(120, stamp)
        core.on_image(message)
        wait_until(lambda: pub.results)
    finally:
        core.shutdown()
    result = json.loads(pub.results[0])
    assert result["header"] == {"stamp": {"sec": 1_712_345_678, "nanosec": 900_000_042}, "frame_id": "front_camera"}
    assert result["stamp_ns"] == stamp and result["text"] == "colour?: red=120" == pub.answers[0]
    for key in ("frame_age_ms", "start_age_ms", "first_token_ms", "prepare_ms", "total_ms", "frames_dropped"):
        assert isinstance(result[key], (int, float))
    partial = json.loads(pub.partials[-1])
    assert partial["text"] == "colour?: red=120" and partial["header"]["stamp"] == result["header"]["stamp"]


def test_callbacks_only_hand_over_and_the_newest_image_wins():
    """on_image returns at once (no inference in the callback); images pushed while the model is busy replace each
    other, so the next answer is about the newest."""
    pub = Published()
    core = pub.core(prompts=["q"], max_hz=0.0)
    slow = core.engine
    busy, release = threading.Event(), threading.Event()

    def prepare(image, original=slow.prepare_image):
        busy.set()
        release.wait(10)  # the worker stays inside "inference" until the test lets it go
        return original(image)

    slow.prepare_image = prepare
    core.start()
    try:
        core.on_image(cdr_image(10, 1))
        assert busy.wait(10), "the worker never took frame 1"
        # the worker is blocked in frame 1: callbacks that waited for inference would never return
        pushing = threading.Thread(target=lambda: [core.on_image(cdr_image(red, red)) for red in (20, 30, 40)])
        pushing.start()
        pushing.join(10)
        assert not pushing.is_alive(), "on_image waited for inference"
        release.set()
        wait_until(lambda: len(pub.results) >= 2)
    finally:
        core.shutdown()
    reds = [json.loads(r)["text"] for r in pub.results]
    assert reds[:2] == ["q: red=10", "q: red=40"]
    assert json.loads(pub.results[1])["frames_dropped"] == 2


def test_ask_service_and_answer_now():
    pub = Published()
    core = pub.core(prompts=["a", "b"], max_hz=0.5, service_timeout_s=5.0)
    core.start()
    try:
        core.on_image(cdr_image(50, 5))
        ok, answer, result_json, message = core.ask("what now?")
        assert ok and answer.startswith("what now?: red=") and message == ""
        assert json.loads(result_json)["one_shot"] is True
        core.on_image(cdr_image(60, 6))
        ok, payload = core.answer_now()
        assert ok and [r["prompt"] for r in json.loads(payload)] == ["a", "b"]
    finally:
        core.shutdown()
    ok, answer, _, message = core.ask("after shutdown")
    assert not ok and "stopped" in message


def test_ask_times_out_without_a_camera():
    pub = Published()
    core = pub.core(prompts=[], service_timeout_s=0.3)
    core.start()
    try:
        ok, _, _, message = core.ask("anyone there?")
    finally:
        core.shutdown()
    assert not ok and "is the camera publishing" in message


def test_bad_images_and_prompts_are_logged_not_fatal():
    pub = Published()
    core = pub.core()
    core.on_image(cdr_image(1, 1, encoding="bayer_rggb8"))
    core.on_prompt("   ")
    core.on_prompt('["one", "two"]')
    assert core.images_rejected == 1 and len(pub.warnings) == 2
    assert core.runner.prompts == ["one", "two"]


def test_dynamic_parameters_apply_and_read_only_ones_refuse():
    pub = Published()
    core = pub.core()
    core.update({"prompts": ["new?"], "max_hz": 4.0, "max_new_tokens": 7})
    assert core.runner.prompts == ["new?"] and core.runner.max_hz == 4.0
    assert core.runner.generation.max_new_tokens == 7
    with pytest.raises(SettingsError, match="read-only"):
        core.update({"image_topic": "/other"})
    with pytest.raises(SettingsError, match="top_p"):
        core.update({"top_p": 0.0})
    assert core.settings.top_p == 1.0  # a refused update changes nothing


def test_settings_validation_names_the_parameter():
    NodeSettings.from_params({"bundle_dir": "/b"})
    cases = [({}, "exactly one"), ({"model_dir": "a", "bundle_dir": "b"}, "exactly one"),
             ({"model_dir": "a", "image_transport": "theora"}, "image_transport"),
             ({"model_dir": "a", "max_hz": -1.0}, "max_hz"), ({"model_dir": "a", "qos_depth": 0}, "qos_depth"),
             ({"model_dir": "a", "prompts": "not a list"}, "list of strings"),
             ({"model_dir": "a", "max_new_tokens": 2.5}, "max_new_tokens"),
             ({"model_dir": "a", "publish_partial": "yes"}, "publish_partial"),
             ({"model_dir": "a", "image_topic": "/has space"}, "image_topic"),
             ({"model_dir": "a", "colour": 1}, "unknown parameter")]
    for values, match in cases:
        with pytest.raises(SettingsError, match=match):
            NodeSettings.from_params(values)


def test_params_yaml_declares_exactly_the_node_parameters_with_their_defaults():
    data = yaml.safe_load((BRIDGE / "config" / "params.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert tuple(params) == PARAMETER_NAMES
    assert params == DEFAULTS
    NodeSettings.from_params(params, require_model=False)


def test_prompt_messages():
    assert parse_prompt_message(" Is the door open? ") == ["Is the door open?"]
    assert parse_prompt_message('["a", "b"]') == ["a", "b"]
    for bad in ("", "[1, 2]", "[oops"):
        with pytest.raises(SettingsError):
            parse_prompt_message(bad)
