"""The ament_python package is well formed: package.xml, setup.py's installed files, the launch file, the node
module, and the Ask service definition (parsed by rosbags' ROS .msg parser, as rosidl would)."""

from __future__ import annotations

import ast
import py_compile
import xml.etree.ElementTree as ET
from pathlib import Path

from rosbags.typesys import get_types_from_msg

BRIDGE = Path(__file__).resolve().parents[2] / "ros_bridge"


def test_package_xml_is_an_ament_python_package_with_its_dependencies():
    root = ET.parse(BRIDGE / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "edge_vlm_ros"
    assert root.find("export/build_type").text == "ament_python"
    depends = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "std_srvs", "rcl_interfaces", "launch_ros"} <= depends
    assert (BRIDGE / "resource" / "edge_vlm_ros").is_file()


def test_setup_py_installs_what_exists_and_the_entry_point_resolves():
    tree = ast.parse((BRIDGE / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    keywords = {k.arg: k.value for k in call.keywords}
    assert ast.literal_eval(keywords["entry_points"]) == {
        "console_scripts": ["edge_vlm_node = edge_vlm_ros.node:main"]}
    for pattern in ("launch/*.launch.py", "config/*.yaml"):
        assert list(BRIDGE.glob(pattern)), pattern
    assert "def main(" in (BRIDGE / "edge_vlm_ros" / "node.py").read_text()
    assert "install_scripts=$base/lib/edge_vlm_ros" in (BRIDGE / "setup.cfg").read_text()


def test_python_files_compile():
    for path in [*BRIDGE.glob("edge_vlm_ros/*.py"), *BRIDGE.glob("launch/*.py"), BRIDGE / "setup.py"]:
        py_compile.compile(str(path), doraise=True)


def test_launch_file_defines_generate_launch_description():
    tree = ast.parse((BRIDGE / "launch" / "edge_vlm.launch.py").read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


def test_ask_service_definition_parses():
    text = (BRIDGE / "edge_vlm_interfaces" / "srv" / "Ask.srv").read_text()
    request, response = text.split("\n---\n")
    # rosidl turns a .srv into two messages, Ask_Request and Ask_Response; parse each half the same way
    req = get_types_from_msg(request, "edge_vlm_interfaces/msg/Ask_Request")
    res = get_types_from_msg(response, "edge_vlm_interfaces/msg/Ask_Response")
    fields = req["edge_vlm_interfaces/msg/Ask_Request"][1]
    assert [(name, kind[1][0]) for name, kind in fields] == [("question", "string")]
    fields = res["edge_vlm_interfaces/msg/Ask_Response"][1]
    assert [(name, kind[1][0]) for name, kind in fields] == [
        ("success", "bool"), ("answer", "string"), ("result_json", "string"), ("message", "string")]
    # the node fills exactly these response fields
    node = (BRIDGE / "edge_vlm_ros" / "node.py").read_text()
    assert "response.success, response.answer, response.result_json, response.message" in node
    cmake = (BRIDGE / "edge_vlm_interfaces" / "CMakeLists.txt").read_text()
    assert '"srv/Ask.srv"' in cmake
    root = ET.parse(BRIDGE / "edge_vlm_interfaces" / "package.xml").getroot()
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
