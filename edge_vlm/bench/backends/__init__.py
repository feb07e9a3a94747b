"""The backends the benchmark drives, stage by stage, behind one small interface.

Every backend answers the same calls, so every stage is timed the same way for all of them:
    load()                          -> build sessions / load weights (timed as load time)
    preprocess(image)               -> pixel values on the device (numpy CLIP preprocessing + upload)
    vision(pixels)                  -> projected image features [N, D]
    prefill(ids, features)          -> (first token, cache)  (embedding lookup, image splice, decoder, argmax)
    decode(token, cache)            -> (next token, cache)   (one position; EOS is not special here)
    sync()                          -> wait for queued device work (CUDA), so stage timers are honest
    describe()                      -> dict: versions, providers, dtype, random_weights, artifacts
    decode_bytes(context)           -> DecodeBytes counted from the loaded weights
    peak_gpu_bytes()                -> int | None
Backends import torch / onnxruntime inside their modules, which only the worker process imports.
"""

from __future__ import annotations

from edge_vlm.bench.settings import BackendSpec, BenchSettings


def make_backend(spec: BackendSpec, settings: BenchSettings, bundle: str | None = None):
    """The backend object for `spec` (the heavy library is imported here, in the worker process)."""
    if spec.family == "torch":
        from edge_vlm.bench.backends.torch_backend import TorchBackend

        return TorchBackend(spec, settings)
    from edge_vlm.bench.backends.ort_backend import OrtBackend

    return OrtBackend(spec, settings, bundle)
