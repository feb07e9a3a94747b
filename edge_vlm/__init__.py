"""edge-vlm: LLaVA-Phi from training to a robot.

`import edge_vlm` stays light: no torch, onnxruntime, cv2, TensorRT or ROS is imported here.
Heavy parts live in subpackages that are imported on demand.
"""

__version__ = "0.1.0"

from edge_vlm.errors import EdgeVLMError

__all__ = ["EdgeVLMError", "__version__"]
