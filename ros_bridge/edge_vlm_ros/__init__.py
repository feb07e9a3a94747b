"""ROS 2 bridge for edge-vlm. `adapter` needs no rclpy; `node` is the rclpy node (entry point edge_vlm_node)."""
