"""GPU paths, run where the hardware exists (markers gpu / tensorrt; skipped on the CPU machines): the decoder's KV
cache stays on the GPU through IO binding and answers match the CPU's; the TensorRT vision engine is built once,
cached, and matches ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from edge_vlm.engine import GenerationConfig, answer


def _cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu with a CUDA GPU")
def test_cuda_decoder_keeps_the_cache_on_the_gpu_and_matches_cpu(fp32_bundle):
    from edge_vlm.runtime import BundleEngine

    gpu = BundleEngine.from_bundle(fp32_bundle, providers=["cuda", "cpu"])
    cpu = BundleEngine.from_bundle(fp32_bundle, providers=["cpu"])
    assert gpu.decoder.device == "cuda" and gpu.providers["decoder"][0] == "CUDAExecutionProvider"
    image = np.full((48, 48, 3), 90, np.uint8)
    prepared_gpu, prepared_cpu = gpu.prepare_image(image), cpu.prepare_image(image)
    assert all(value.device_name().lower() == "cuda" for value in prepared_gpu.prefix_cache.values)
    np.testing.assert_allclose(prepared_gpu.features, prepared_cpu.features, atol=1e-3)
    config = GenerationConfig(max_new_tokens=8)
    assert answer(gpu, prepared_gpu, "What is it?", config=config) == answer(cpu, prepared_cpu, "What is it?",
                                                                               config=config)


@pytest.mark.tensorrt
def test_tensorrt_vision_engine_is_cached_and_matches_onnxruntime(fp32_bundle, tmp_path, monkeypatch):
    from edge_vlm.runtime.providers import tensorrt_usable

    if not tensorrt_usable():
        pytest.skip("needs the TensorRT Python API, cuda-python and an NVIDIA GPU")
    from edge_vlm.runtime import BundleEngine
    from edge_vlm.runtime.trt import TensorRTVision

    monkeypatch.setenv("EDGE_VLM_TRT_CACHE", str(tmp_path / "cache"))
    first = TensorRTVision(fp32_bundle / "vision.onnx", {"precision": "fp16", "max_batch": 4}, log=lambda _: None)
    engines = list((tmp_path / "cache").glob("*.engine"))
    assert len(engines) == 1
    stamp = engines[0].stat().st_mtime_ns
    TensorRTVision(fp32_bundle / "vision.onnx", {"precision": "fp16", "max_batch": 4}, log=lambda _: None)
    assert engines[0].stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt
    pixels = np.random.default_rng(0).normal(size=(3, 3, 56, 56)).astype(np.float32)
    reference = BundleEngine.from_bundle(fp32_bundle, providers=["cpu"]).image_features(pixels)
    got = first(pixels)
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= 2e-2 * np.abs(reference).max()
