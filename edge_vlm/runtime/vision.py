"""The vision part of a bundle: pixel values [B, 3, S, S] -> projected image features [B, N, D] (float32).

Runs `vision.onnx` on ONNX Runtime (CUDA or CPU), or on edge-vlm's TensorRT engine when the provider list starts with
'tensorrt' (see edge_vlm.runtime.trt: the engine is built on the target from the same ONNX file and cached).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_vlm.errors import EdgeVLMError
from edge_vlm.runtime.providers import TENSORRT, open_session


class Vision:
    def __init__(self, path: str | Path, providers: list[str], options, tensorrt_settings: dict | None = None):
        self.path = Path(path)
        self.trt = None
        if providers and providers[0] == TENSORRT:
            from edge_vlm.runtime.trt import TensorRTVision

            self.trt = TensorRTVision(self.path, tensorrt_settings or {})
            self.providers = [TENSORRT]
            return
        self.session = open_session(self.path, options, providers, "vision model")
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if pixel_values.ndim != 4:
            raise EdgeVLMError(f"internal: pixel values must be [B, 3, S, S], got {pixel_values.shape}")
        if self.trt is not None:
            return self.trt(pixel_values)
        return self.session.run(None, {self.input_name: pixel_values})[0].astype(np.float32, copy=False)
