"""The ROS 2 node: a thin rclpy adapter over edge_vlm_ros.adapter.BridgeCore (which holds all the logic).

Subscribes to the camera (sensor-data QoS) and a prompt topic; publishes each answer (std_msgs/String), its JSON
result (source header stamp + latencies) and the partial text; serves one-shot questions. Inference runs on the
core's worker thread; the callbacks here only convert and hand over.
"""

from __future__ import annotations

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from edge_vlm.errors import EdgeVLMError
from edge_vlm.stream.engines import load_engine
from edge_vlm_ros.adapter import PARAMETERS, BridgeCore, NodeSettings

try:  # the one-shot question service needs the companion interface package (see README)
    from edge_vlm_interfaces.srv import Ask
except ImportError:
    Ask = None


class EdgeVLMNode(Node):
    def __init__(self):
        super().__init__("edge_vlm")
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default,
                                   ParameterDescriptor(description=spec.description, read_only=not spec.dynamic))
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        settings = NodeSettings.from_params(values)  # SettingsError names the bad parameter
        engine, info = load_engine(model=settings.model_dir or None, bundle=settings.bundle_dir or None,
                                   threads=settings.threads or None)
        if info.get("random_weights"):
            self.get_logger().warn(f"{info['path']} has RANDOM weights: answers are noise, timings are real")

        answer_pub = self.create_publisher(String, settings.answer_topic, 10)
        result_pub = self.create_publisher(String, settings.result_topic, 10)
        partial_pub = self.create_publisher(String, settings.partial_topic, 10)

        def publisher(pub):
            def publish(text: str) -> None:
                pub.publish(String(data=text))
            return publish

        self.core = BridgeCore(engine, settings, publisher(answer_pub), publisher(result_pub),
                               publisher(partial_pub), log_warning=self.get_logger().warn)

        sensor_qos = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE,
                                history=HistoryPolicy.KEEP_LAST, depth=settings.qos_depth)
        topics = MutuallyExclusiveCallbackGroup()
        services = ReentrantCallbackGroup()  # a waiting service call must not block images or other calls
        msg_type = CompressedImage if settings.image_transport == "compressed" else Image
        self.create_subscription(msg_type, settings.image_topic, self.core.on_image, sensor_qos,
                                 callback_group=topics)
        self.create_subscription(String, settings.prompt_topic, lambda msg: self.core.on_prompt(msg.data), 10,
                                 callback_group=topics)
        self.create_service(Trigger, settings.answer_now_service, self._answer_now, callback_group=services)
        if Ask is not None:
            self.create_service(Ask, settings.ask_service, self._ask, callback_group=services)
        else:
            self.get_logger().warn("edge_vlm_interfaces is not built: the ask service is off (answer_now works)")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.core.start()
        self.get_logger().info(f"answering {settings.prompts} about {settings.image_topic} "
                               f"({info['backend']} {info['path']}, max {settings.max_hz or 'unlimited'} Hz)")

    def _on_set_parameters(self, params) -> SetParametersResult:
        try:
            self.core.update({p.name: p.value for p in params})
        except EdgeVLMError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _ask(self, request, response):
        response.success, response.answer, response.result_json, response.message = self.core.ask(request.question)
        return response

    def _answer_now(self, _request, response):
        response.success, response.message = self.core.answer_now()
        return response

    def destroy_node(self):
        self.core.shutdown()
        return super().destroy_node()


def main(args=None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = EdgeVLMNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except EdgeVLMError as exc:  # bad parameters / model path: one line, no traceback
        get_logger("edge_vlm").fatal(str(exc))
        raise SystemExit(2) from None
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
