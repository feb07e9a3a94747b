"""One place that knows which optional dependency lives in which extra, and says how to install it."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from edge_vlm.errors import MissingDependencyError

# module name -> (pip extra, what it is needed for)
_EXTRAS = {
    "torch": ("torch", "the PyTorch model"),
    "transformers": ("torch", "the PyTorch model"),
    "accelerate": ("train", "training"),
    "peft": ("train", "LoRA / QLoRA training"),
    "onnx": ("export", "ONNX export"),
    "onnxscript": ("export", "ONNX export"),
    "onnxruntime": ("runtime", "running bundles"),
    "onnxruntime_genai": ("export", "building the ONNX decoder"),
    "cv2": ("camera", "camera, video and RTSP sources"),
    "rosbags": ("ros", "rosbag2 replay"),
    "bitsandbytes": ("quant", "8-bit / 4-bit PyTorch loading"),
    "matplotlib": ("bench", "charts"),
    "jsonschema": ("bench", "validating benchmark reports"),
    "tensorrt": ("gpu", "TensorRT engines (install TensorRT from NVIDIA / JetPack)"),
}


def available(module: str) -> bool:
    """True when `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise an error that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra, purpose = _EXTRAS.get(module, ("all", module))
        raise MissingDependencyError(
            f"{module} is needed for {purpose} but is not installed: pip install 'edge-vlm[{extra}]' ({exc})"
        ) from exc
