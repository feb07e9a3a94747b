"""ros2 launch edge_vlm_ros edge_vlm.launch.py [params_file:=my_params.yaml] [namespace:=robot1]

Starts the edge_vlm node with the parameters of params_file (default: the package's config/params.yaml,
which must be given model_dir or bundle_dir)."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    default_params = PathJoinSubstitution([FindPackageShare("edge_vlm_ros"), "config", "params.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML file with the node's parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace for the node"),
        Node(
            package="edge_vlm_ros",
            executable="edge_vlm_node",
            name="edge_vlm",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file")],
            output="screen",
            emulate_tty=True,
        ),
    ])
