"""`edge-vlm export --tensorrt`: the vision part's TensorRT settings, INT8 calibration images, and the engine itself
when TensorRT is importable here (an export on the target device).

An engine is specific to a GPU model and a TensorRT version, so a bundle exported elsewhere carries the settings and
calibration images only, and the runtime builds the engine on the target at first load (edge_vlm.runtime.trt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_vlm.errors import EdgeVLMError

MAX_BATCH = 4
CALIBRATION_IMAGES = 32


def prepare_tensorrt(bundle_dir: Path, precision: str, samples, image_config, log=print) -> dict:
    """Record TensorRT settings for vision.onnx in the bundle (and build the engine if TensorRT is here)."""
    from edge_vlm.imaging import preprocess
    from edge_vlm.runtime import trt as rt
    from edge_vlm.runtime.providers import tensorrt_usable

    if precision not in ("fp16", "int8"):
        raise EdgeVLMError(f"--tensorrt-precision must be fp16 or int8, got {precision!r}")
    onnx_path = bundle_dir / "vision.onnx"
    settings = {"precision": precision, "max_batch": MAX_BATCH, "onnx_sha256": rt.onnx_digest(onnx_path)}
    calibration = None
    if precision == "int8":
        images = [s.image for s in samples if s.image is not None][:CALIBRATION_IMAGES]
        if not images:
            raise EdgeVLMError("an INT8 TensorRT engine needs calibration images: pass --val DATA with images")
        calibration = np.stack([preprocess(image, image_config) for image in images]).astype(np.float32)
        (bundle_dir / "trt").mkdir(exist_ok=True)
        np.save(bundle_dir / "trt" / "calibration.npy", calibration, allow_pickle=False)
        settings["calibration_images"] = len(images)
    if not tensorrt_usable():
        log("  TensorRT is not importable here (pip install tensorrt cuda-python, or JetPack's python3-libnvinfer): "
            "the bundle records the engine settings and the engine is built on the target at first load")
        settings["engines"] = []
        return {"vision": settings}
    trt, cudart = rt.trt_modules()
    key = rt.engine_key(settings["onnx_sha256"], precision, MAX_BATCH, rt.gpu_name(cudart), trt.__version__)
    rt.build_engine(onnx_path, bundle_dir / "trt" / key, precision, MAX_BATCH, calibration, log)
    settings["engines"] = [f"trt/{key}"]
    return {"vision": settings}
