"""The vision part on TensorRT: an engine built on the target from the bundle's vision.onnx, cached, and run.

Written against the TensorRT Python API (8.6 / 10.x) with cuda-python for device memory (no torch, no pycuda).
An engine only runs on the GPU model and TensorRT version that built it, so engines are cached under a key made of
both (plus the ONNX file's hash, the precision and the batch profile): first in the bundle's `trt/` folder (when the
export ran on the target), then in the user cache (`$EDGE_VLM_TRT_CACHE`, default ~/.cache/edge-vlm/tensorrt),
where a missing engine is built on first use. INT8 engines are calibrated with the calibration images the export
stored in the bundle (`trt/calibration.npy`, preprocessed pixel values), through TensorRT's entropy calibrator.

Not exercised on the project's CPU machines (no TensorRT there): tests marked `tensorrt` run it where it exists.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edge_vlm.errors import EdgeVLMError

WORKSPACE_BYTES = 2 << 30


def trt_modules():
    """(tensorrt, cudart) or a MissingDependencyError that names what is missing."""
    from edge_vlm.deps import require

    trt = require("tensorrt")
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise EdgeVLMError("TensorRT engines need cuda-python for device memory: pip install cuda-python") from exc
    return trt, cudart


def _check(result):
    """cuda-python returns (error, values...); raise on an error, return the values."""
    error, *values = result
    if int(error) != 0:
        raise EdgeVLMError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else values


def gpu_name(cudart) -> str:
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 ")


def onnx_digest(onnx_path: Path) -> str:
    """sha256 over the vision ONNX file and its external data (what an engine was built from)."""
    digest = hashlib.sha256()
    for path in (onnx_path, onnx_path.with_name(onnx_path.name + ".data")):
        if path.is_file():
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
    return digest.hexdigest()


def engine_key(digest: str, precision: str, max_batch: int, gpu: str, trt_version: str) -> str:
    """File name of a cached engine: GPU model, TensorRT version, ONNX hash, precision, batch profile."""
    digest = digest[:16]
    safe_gpu = "".join(c if c.isalnum() else "-" for c in gpu).strip("-")
    return f"{safe_gpu}_trt{trt_version}_{digest}_{precision}_b{max_batch}.engine"


def user_cache_dir() -> Path:
    return Path(os.environ.get("EDGE_VLM_TRT_CACHE", Path.home() / ".cache" / "edge-vlm" / "tensorrt"))


class _EntropyCalibrator:
    """Feeds calibration batches to TensorRT's INT8 entropy calibrator (created lazily: it subclasses a TRT type)."""

    @staticmethod
    def create(trt, cudart, pixels: np.ndarray, batch: int, cache_path: Path):
        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                trt.IInt8EntropyCalibrator2.__init__(self)
                self.pixels = np.ascontiguousarray(pixels, dtype=np.float32)
                self.batch = batch
                self.index = 0
                self.device = _check(cudart.cudaMalloc(self.pixels[:batch].nbytes))

            def get_batch_size(self):
                return self.batch

            def get_batch(self, names):
                if self.index + self.batch > len(self.pixels):
                    return None
                chunk = np.ascontiguousarray(self.pixels[self.index:self.index + self.batch])
                _check(cudart.cudaMemcpy(self.device, chunk.ctypes.data, chunk.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
                self.index += self.batch
                return [int(self.device)]

            def read_calibration_cache(self):
                return cache_path.read_bytes() if cache_path.is_file() else None

            def write_calibration_cache(self, cache):
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                cache_path.write_bytes(bytes(cache))

            def free(self):
                _check(cudart.cudaFree(self.device))

        return Calibrator()


def build_engine(onnx_path: Path, engine_path: Path, precision: str = "fp16", max_batch: int = 4,
                 calibration: np.ndarray | None = None, log=print) -> Path:
    """Build a serialized engine for vision.onnx: FP16 (or INT8 with calibration pixels [n, 3, S, S]), one
    optimization profile for batch 1..max_batch, written atomically to `engine_path`."""
    trt, cudart = trt_modules()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeVLMError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    pixel_input = network.get_input(0)
    _, channels, height, width = pixel_input.shape
    profile = builder.create_optimization_profile()
    profile.set_shape(pixel_input.name, (1, channels, height, width), (1, channels, height, width),
                      (max_batch, channels, height, width))
    config.add_optimization_profile(profile)
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise EdgeVLMError("an INT8 TensorRT engine needs calibration images; the bundle has none "
                               "(export with --tensorrt-precision int8 and --calibration DATA or --val DATA)")
        config.set_flag(trt.BuilderFlag.INT8)
        batch = min(max_batch, len(calibration))
        calibrator = _EntropyCalibrator.create(trt, cudart, calibration, batch,
                                               engine_path.with_suffix(".calib"))
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    elif precision != "fp16":
        raise EdgeVLMError(f"TensorRT vision precision must be fp16 or int8, got {precision!r}")
    log(f"  building a TensorRT {precision} engine for {onnx_path.name} on {gpu_name(cudart)} "
        f"(TensorRT {trt.__version__}); this takes a few minutes once per GPU model and TensorRT version")
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None:
        calibrator.free()
    if serialized is None:
        raise EdgeVLMError(f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    partial = engine_path.with_name(engine_path.name + ".partial")
    partial.write_bytes(bytes(serialized))
    partial.replace(engine_path)
    return engine_path


class TensorRTVision:
    """Runs the cached (or freshly built) vision engine on one CUDA stream."""

    def __init__(self, onnx_path: Path, settings: dict, log=print):
        trt, cudart = trt_modules()
        self.trt, self.cudart = trt, cudart
        precision = settings.get("precision", "fp16")
        max_batch = int(settings.get("max_batch", 4))
        digest = settings.get("onnx_sha256") or onnx_digest(onnx_path)
        key = engine_key(digest, precision, max_batch, gpu_name(cudart), trt.__version__)
        bundle_engine = onnx_path.parent / "trt" / key
        engine_path = bundle_engine if bundle_engine.is_file() else user_cache_dir() / key
        if not engine_path.is_file():
            calibration_file = onnx_path.parent / "trt" / "calibration.npy"
            calibration = np.load(calibration_file) if calibration_file.is_file() else None
            build_engine(onnx_path, engine_path, precision, max_batch, calibration, log)
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EdgeVLMError(f"TensorRT cannot load the engine {engine_path}: delete it to rebuild")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.max_batch = max_batch
        self.stream = _check(cudart.cudaStreamCreate())

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        if pixel_values.shape[0] > self.max_batch:  # the profile's limit: run in chunks
            return np.concatenate([self(pixel_values[i:i + self.max_batch])
                                   for i in range(0, len(pixel_values), self.max_batch)])
        cudart = self.cudart
        self.context.set_input_shape(self.input_name, tuple(pixel_values.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out_dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        output = np.empty(out_shape, dtype=out_dtype)
        device_in = _check(cudart.cudaMalloc(pixel_values.nbytes))
        device_out = _check(cudart.cudaMalloc(output.nbytes))
        try:
            _check(cudart.cudaMemcpyAsync(device_in, pixel_values.ctypes.data, pixel_values.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
            self.context.set_tensor_address(self.input_name, int(device_in))
            self.context.set_tensor_address(self.output_name, int(device_out))
            if not self.context.execute_async_v3(int(self.stream)):
                raise EdgeVLMError("TensorRT failed to run the vision engine")
            _check(cudart.cudaMemcpyAsync(output.ctypes.data, device_out, output.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            _check(cudart.cudaStreamSynchronize(self.stream))
        finally:
            cudart.cudaFree(device_in)
            cudart.cudaFree(device_out)
        return output.astype(np.float32, copy=False)
