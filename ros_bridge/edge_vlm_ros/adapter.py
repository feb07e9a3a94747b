"""Everything the ROS 2 node does that needs no rclpy: parameters, message conversion, stamping, JSON results, and
the bridge core that feeds frames to edge_vlm.stream and publishes through plain callables.

node.py only wires rclpy subscriptions, publishers and services to `BridgeCore`; this module is tested without ROS
(with real CDR messages built by `rosbags`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_vlm.engine import GenerationConfig
from edge_vlm.errors import EdgeVLMError
from edge_vlm.stream import PartialText, PushSource, StreamResult, StreamRunner
from edge_vlm.stream.rosmsg import compressed_msg_to_rgb8, image_msg_to_rgb8, result_json, stamp_dict, stamp_to_ns


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: object
    description: str
    dynamic: bool = False  # may change while the node runs (others are read-only after start)


# Every setting of the node. node.py declares exactly these; config/params.yaml lists exactly these (a test checks).
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("model_dir", "", "checkpoint directory (PyTorch); give this or bundle_dir"),
    ParamSpec("bundle_dir", "", "exported bundle directory (ONNX runtime, no torch); give this or model_dir"),
    ParamSpec("image_topic", "/camera/image_raw", "the camera topic to subscribe to"),
    ParamSpec("image_transport", "raw", "raw: sensor_msgs/Image; compressed: sensor_msgs/CompressedImage"),
    ParamSpec("qos_depth", 1, "history depth of the sensor-data QoS subscription (best effort, volatile)"),
    ParamSpec("prompts", ["What do you see?"], "questions asked about every answered frame", dynamic=True),
    ParamSpec("prompt_topic", "~/prompt",
              "std_msgs/String that replaces the prompts (a JSON list of strings, or one prompt)"),
    ParamSpec("max_hz", 1.0, "answer at most this many frames per second; 0 = as fast as the model goes", dynamic=True),
    ParamSpec("max_age_ms", 0.0, "never answer about a frame older than this; 0 = no limit", dynamic=True),
    ParamSpec("max_new_tokens", 32, "answer length limit in tokens", dynamic=True),
    ParamSpec("temperature", 0.0, "sampling temperature; 0 = greedy", dynamic=True),
    ParamSpec("top_p", 1.0, "nucleus sampling mass", dynamic=True),
    ParamSpec("seed", -1, "sampling seed; -1 = unseeded", dynamic=True),
    ParamSpec("threads", 0, "CPU threads for inference; 0 = the backend's default"),
    ParamSpec("answer_topic", "~/answer", "std_msgs/String: each answer's text"),
    ParamSpec("result_topic", "~/result", "std_msgs/String: each answer as JSON (source header stamp, latencies)"),
    ParamSpec("partial_topic", "~/partial", "std_msgs/String: JSON of the answer so far while it is decoded"),
    ParamSpec("publish_partial", True, "publish partial text on partial_topic"),
    ParamSpec("ask_service", "~/ask", "edge_vlm_interfaces/srv/Ask: one question about the newest frame"),
    ParamSpec("answer_now_service", "~/answer_now",
              "std_srvs/srv/Trigger: the standing prompts about the newest frame, now"),
    ParamSpec("service_timeout_s", 30.0, "how long a service call waits for its answer"),
)
PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
DEFAULTS = {p.name: p.default for p in PARAMETERS}


class SettingsError(EdgeVLMError):
    """A parameter value the node cannot run with; the message names the parameter and the fix."""


@dataclass
class NodeSettings:
    model_dir: str = ""
    bundle_dir: str = ""
    image_topic: str = "/camera/image_raw"
    image_transport: str = "raw"
    qos_depth: int = 1
    prompts: list[str] = field(default_factory=lambda: ["What do you see?"])
    prompt_topic: str = "~/prompt"
    max_hz: float = 1.0
    max_age_ms: float = 0.0
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = -1
    threads: int = 0
    answer_topic: str = "~/answer"
    result_topic: str = "~/result"
    partial_topic: str = "~/partial"
    publish_partial: bool = True
    ask_service: str = "~/ask"
    answer_now_service: str = "~/answer_now"
    service_timeout_s: float = 30.0

    @classmethod
    def from_params(cls, values: dict, require_model: bool = True) -> NodeSettings:
        """Validate parameter values (missing ones take their defaults); raises SettingsError."""
        unknown = sorted(set(values) - set(PARAMETER_NAMES))
        if unknown:
            raise SettingsError(f"unknown parameter(s) {unknown}; known: {', '.join(PARAMETER_NAMES)}")
        merged = {**DEFAULTS, **values}
        settings = cls(**{name: _typed(name, merged[name]) for name in PARAMETER_NAMES})
        settings.validate(require_model)
        return settings

    def validate(self, require_model: bool = True) -> None:
        if require_model and bool(self.model_dir) == bool(self.bundle_dir):
            raise SettingsError("set exactly one of the parameters model_dir (a checkpoint) or bundle_dir (a bundle)")
        if self.image_transport not in ("raw", "compressed"):
            raise SettingsError(f"image_transport must be 'raw' or 'compressed', got {self.image_transport!r}")
        for name in ("image_topic", "prompt_topic", "answer_topic", "result_topic", "partial_topic", "ask_service",
                     "answer_now_service"):
            value = getattr(self, name)
            if not value or any(c.isspace() for c in value):
                raise SettingsError(f"{name} must be a ROS name without spaces, got {value!r}")
        if self.qos_depth < 1:
            raise SettingsError(f"qos_depth must be >= 1, got {self.qos_depth}")
        if any(not p.strip() for p in self.prompts):
            raise SettingsError("prompts must not contain empty strings")
        checks = (("max_hz", self.max_hz >= 0, ">= 0 (0 = unlimited)"),
                  ("max_age_ms", self.max_age_ms >= 0, ">= 0 (0 = no limit)"),
                  ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
                  ("temperature", self.temperature >= 0, ">= 0"),
                  ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                  ("seed", self.seed >= -1, ">= -1 (-1 = unseeded)"),
                  ("threads", self.threads >= 0, ">= 0 (0 = default)"),
                  ("service_timeout_s", self.service_timeout_s > 0, "> 0"))
        for name, ok, rule in checks:
            if not ok:
                raise SettingsError(f"{name} must be {rule}, got {getattr(self, name)}")

    def generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                seed=None if self.seed < 0 else self.seed)


def _typed(name: str, value):
    """Coerce a parameter to its default's type, refusing what would silently change meaning."""
    default = DEFAULTS[name]
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, list):
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return [str(v) for v in value]
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        kind = "list of strings" if isinstance(default, list) else type(default).__name__
        raise SettingsError(f"parameter {name} must be a {kind}, got {value!r}") from None


def parse_prompt_message(text: str) -> list[str]:
    """A prompt-topic message -> prompts: a JSON list of strings, or the whole text as one prompt."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            prompts = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"prompt message looks like JSON but is not: {exc}") from exc
        if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise SettingsError("a JSON prompt message must be a list of non-empty strings")
        return prompts
    if not stripped:
        raise SettingsError("the prompt message is empty")
    return [stripped]


def image_from_msg(msg, compressed: bool) -> tuple:
    """(RGB uint8 HxWx3, header stamp in ns, frame_id) of an Image / CompressedImage (rclpy or rosbags)."""
    rgb = compressed_msg_to_rgb8(msg) if compressed else image_msg_to_rgb8(msg)
    return rgb, stamp_to_ns(msg.header.stamp), str(msg.header.frame_id)


def partial_json(partial: PartialText) -> str:
    """The JSON published on the partial topic while an answer is decoded."""
    return json.dumps({"frame_seq": partial.frame_seq, "prompt_index": partial.prompt_index,
                       "prompt": partial.prompt, "text": partial.text, "one_shot": partial.one_shot,
                       "header": {"stamp": stamp_dict(partial.stamp_ns)}}, ensure_ascii=False)


class BridgeCore:
    """The node's logic: a PushSource fed by the image callback, a StreamRunner on a worker thread, and three
    publish callables (answer text, JSON result, JSON partial). Callbacks only convert and push; inference
    never runs in them."""

    def __init__(self, engine, settings: NodeSettings, publish_answer: Callable[[str], None],
                 publish_result: Callable[[str], None], publish_partial: Callable[[str], None] | None = None,
                 log_warning: Callable[[str], None] | None = None):
        self.settings = settings
        self.engine = engine
        self.source = PushSource(name=settings.image_topic)
        self.publish_answer = publish_answer
        self.publish_result = publish_result
        self.publish_partial = publish_partial if settings.publish_partial else None
        self.log_warning = log_warning or (lambda message: None)
        self.images_received = 0
        self.images_rejected = 0
        self.runner = StreamRunner(engine, self.source, settings.prompts, max_hz=settings.max_hz or None,
                                   max_age_ms=settings.max_age_ms or None, generation=settings.generation(),
                                   on_result=self._on_result, on_partial=self._on_partial)

    # ---- lifecycle ----
    def start(self) -> None:
        self.source.open()
        self.runner.start()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self.runner.stop("shutdown")
        self.source.close()
        self.runner.join(timeout_s)

    # ---- callbacks (executor threads): cheap work only ----
    def on_image(self, msg) -> None:
        """Image / CompressedImage callback: convert and offer as the newest frame."""
        try:
            rgb, stamp_ns, frame_id = image_from_msg(msg, self.settings.image_transport == "compressed")
        except EdgeVLMError as exc:
            self.images_rejected += 1
            self.log_warning(f"dropped an image: {exc}")
            return
        self.images_received += 1
        self.source.push(rgb, stamp_ns=stamp_ns, frame_id=frame_id)

    def on_prompt(self, text: str) -> None:
        try:
            self.runner.set_prompts(parse_prompt_message(text))
        except EdgeVLMError as exc:
            self.log_warning(f"ignored a prompt message: {exc}")

    def update(self, values: dict) -> NodeSettings:
        """Apply changed dynamic parameters (validated as a whole); raises SettingsError for a bad value."""
        fixed = [p.name for p in PARAMETERS if not p.dynamic and p.name in values
                 and values[p.name] != getattr(self.settings, p.name)]
        if fixed:
            raise SettingsError(f"parameter(s) {fixed} are read-only while the node runs: restart it")
        current = {name: getattr(self.settings, name) for name in PARAMETER_NAMES}
        settings = NodeSettings.from_params({**current, **values})
        self.settings = settings
        self.runner.set_prompts(settings.prompts)
        self.runner.max_hz = settings.max_hz or None
        self.runner.max_age_ms = settings.max_age_ms or None
        self.runner.generation = settings.generation()
        return settings

    # ---- services (a service thread waits; the worker answers) ----
    def ask(self, question: str) -> tuple[bool, str, str, str]:
        """(success, answer, result JSON, message) for one question about the next frame."""
        try:
            result = self.runner.ask(question, timeout_s=self.settings.service_timeout_s)
        except TimeoutError:
            return False, "", "", f"no answer within {self.settings.service_timeout_s} s (is the camera publishing?)"
        except EdgeVLMError as exc:
            return False, "", "", str(exc)
        return True, result.text, result_json(result), ""

    def answer_now(self) -> tuple[bool, str]:
        """(success, JSON list of results) for every standing prompt about the next frame (Trigger service)."""
        prompts = self.runner.prompts
        if not prompts:
            return False, "no standing prompts (set the prompts parameter or publish on the prompt topic)"
        futures = [self.runner.submit(p) for p in prompts]
        try:
            results = [f.result(timeout=self.settings.service_timeout_s) for f in futures]
        except TimeoutError:
            return False, f"no answer within {self.settings.service_timeout_s} s (is the camera publishing?)"
        except EdgeVLMError as exc:
            return False, str(exc)
        return True, json.dumps([json.loads(result_json(r)) for r in results], ensure_ascii=False)

    # ---- worker thread -> publishers ----
    def _on_result(self, result: StreamResult) -> None:
        if result.one_shot:  # answered through a service response; the topics carry the standing prompts
            return
        self.publish_answer(result.text)
        self.publish_result(result_json(result))

    def _on_partial(self, partial: PartialText) -> None:
        if self.publish_partial is None or partial.one_shot:
            return
        self.publish_partial(partial_json(partial))
