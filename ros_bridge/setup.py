from glob import glob

from setuptools import setup

package_name = "edge_vlm_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml", "README.md"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    # edge-vlm itself is a pip package (not a rosdep key): install it into the Python that ROS uses (README)
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="edge-vlm maintainers",
    maintainer_email="edge-vlm@example.org",
    description="ROS 2 node for edge-vlm (LLaVA-Phi)",
    license="Apache-2.0",
    entry_points={"console_scripts": ["edge_vlm_node = edge_vlm_ros.node:main"]},
)
