"""The torch-free runtime: runs an exported bundle with ONNX Runtime (vision, decoder loop, sampling, KV cache).

Nothing in this package imports torch or transformers, at any level: a bundle must run on a Jetson or a server that
has neither. onnxruntime itself is imported when an engine is created, not when this package is imported.
"""

from edge_vlm.runtime.bundle import Bundle
from edge_vlm.runtime.engine import BundleEngine

__all__ = ["Bundle", "BundleEngine"]
