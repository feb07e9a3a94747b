"""The onnxruntime backend: a bundle run through the torch-free runtime (edge_vlm.runtime.BundleEngine).

The stages use the engine's public building blocks (image_features, prefill, step), i.e. the
exact code `edge-vlm ask --bundle` runs. Nothing here imports torch: the worker's peak RSS is the runtime's.
"""

from __future__ import annotations

import numpy as np

from edge_vlm.bench.artifacts import bundle_artifacts, bundle_random_weights, image_tokens_info
from edge_vlm.bench.roofline import DecodeBytes, WeightFormat, analytic_decode_bytes, onnx_decode_bytes
from edge_vlm.bench.settings import BackendSpec, BenchSettings
from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import preprocess


def providers_for(spec: BackendSpec, device: str) -> list[str]:
    """The execution providers a backend asks for (edge_vlm.runtime.providers names)."""
    if spec.tensorrt_vision:
        return ["tensorrt", "cuda", "cpu"]
    return ["cuda", "cpu"] if device == "cuda" else ["cpu"]


class OrtBackend:
    def __init__(self, spec: BackendSpec, settings: BenchSettings, bundle: str | None):
        if bundle is None:
            raise EdgeVLMError(f"{spec.name} needs a bundle with a {spec.precision} decoder (--bundle DIR)")
        self.spec, self.settings, self.bundle_dir = spec, settings, bundle
        self.device = settings.device
        self.providers = providers_for(spec, self.device)
        self.random_weights = settings.random_weights

    def load(self) -> None:
        from edge_vlm.runtime import BundleEngine

        engine = BundleEngine.from_bundle(self.bundle_dir, providers=self.providers, threads=self.settings.threads,
                                          verify=self.settings.verify)
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.num_image_tokens = engine.num_image_tokens
        self.context_length = engine.context_length
        self.manifest = engine.bundle.manifest
        self.random_weights = self.random_weights or bundle_random_weights(self.manifest)
        if engine.bundle.precision and self.spec.precision not in str(engine.bundle.precision).lower():
            raise EdgeVLMError(f"{self.bundle_dir} has precision {engine.bundle.precision}, not {self.spec.precision}")
        asked, contextual = self.settings.image_tokens, self.settings.contextual_tokens
        kept = engine.token_selection.contextual if engine.token_selection else 0
        if asked not in (None, engine.num_image_tokens) or contextual not in (None, kept):
            raise EdgeVLMError(f"--image-tokens/--contextual-tokens ask for {asked or engine.num_image_tokens} "
                               f"({contextual or 0} contextual), but the bundle {self.bundle_dir} gives "
                               f"{engine.num_image_tokens} ({kept} contextual), fixed at export: export it with "
                               "that setting, or drop the flag")

    # --------------------------------------------------------------------------------------------------- stages
    def sync(self) -> None:
        """Every stage returns host numpy arrays (logits come back to the CPU), so there is nothing queued."""

    def preprocess(self, image) -> np.ndarray:
        return preprocess(image, self.engine.image_config)[None]

    def vision(self, pixels: np.ndarray) -> np.ndarray:
        return self.engine.image_features(pixels)[0]

    def prefill(self, ids: list[int], features: np.ndarray, reserve: int = 0):
        """`reserve`: the length the query reaches, so the KV buffers are allocated once (as `edge-vlm ask` does)."""
        logits, cache = self.engine.prefill(ids, features, reserve=reserve)
        return int(np.argmax(logits)), cache

    def decode(self, token: int, cache):
        logits, cache = self.engine.step(token, cache)
        return int(np.argmax(logits)), cache

    # ------------------------------------------------------------------------------------------------ reporting
    def decode_bytes(self, context: float) -> DecodeBytes:
        model = self.manifest["model"]
        heads = int(model.get("num_attention_heads") or int(model["hidden_size"]) // int(model["head_size"]))
        text = {
            "hidden_size": int(model["hidden_size"]),
            "num_hidden_layers": int(model.get("num_layers") or len(self.engine.decoder.past_names) // 2),
            "num_attention_heads": heads,
            "num_key_value_heads": int(model.get("num_kv_heads") or self.engine.decoder.kv_heads),
            "vocab_size": int(model["vocab_size"]),
        }
        embedding_row = int(self.engine.embeddings.shape[1]) * self.engine.embeddings.dtype.itemsize
        kv_bytes = np.dtype(self.engine.decoder.dtype).itemsize
        from edge_vlm.deps import available

        if available("onnx"):
            return onnx_decode_bytes(self.engine.bundle.file("decoder"), text, context, embedding_row, kv_bytes)
        # onnx is an export-side package; a deployment box may only have onnxruntime: count from the shapes and the
        # manifest's quantization settings
        text["intermediate_size"] = int(model.get("intermediate_size") or 4 * text["hidden_size"])
        body, head = manifest_formats(self.manifest, kv_bytes)
        counted = analytic_decode_bytes(text, self.spec.precision, context, weight_format=body, float_bytes=kv_bytes,
                                        lm_head_format=head)
        counted.source += " (no onnx package to read the graph's initializers; intermediate size assumed 4 x hidden" \
            " when the manifest does not record it)"
        return counted

    def end_profiling(self) -> dict[str, str]:
        """Stop the sessions' ONNX Runtime profilers (see edge_vlm.bench.profile): {session: JSON file}."""
        files = {}
        vision_session = getattr(self.engine.vision, "session", None)  # None when the vision part is TensorRT
        if vision_session is not None:
            files["vision"] = vision_session.end_profiling()
        files["decoder"] = self.engine.decoder.session.end_profiling()
        return files

    def peak_gpu_bytes(self) -> int | None:
        return None  # ONNX Runtime has no allocator statistics in Python: the worker samples nvidia-smi instead

    def describe(self) -> dict:
        import onnxruntime

        return {
            "library": "onnxruntime",
            "versions": {"onnxruntime": onnxruntime.__version__},
            "precision": self.engine.bundle.precision,
            "device": self.device,
            "providers": self.engine.providers,
            "threads": self.settings.threads,
            "source": f"bundle {self.bundle_dir}",
            "random_weights": self.random_weights,
            "image_tokens": image_tokens_info(self.num_image_tokens, self.engine.patch_tokens,
                                              self.engine.token_selection),
            "artifacts": bundle_artifacts(self.bundle_dir, self.manifest),
        }


def manifest_formats(manifest: dict, float_bytes: int) -> tuple[WeightFormat | None, WeightFormat | None]:
    """(body, lm_head) weight formats from the manifest's quantization section (MatMulNBits: block scales in the
    float type, packed zero points when asymmetric); (None, None) for a float decoder."""
    quant = manifest.get("quantization")
    if not quant:
        return None, None
    bits, block = int(quant["bits"]), int(quant.get("block_size") or 32)
    zero_points = not quant.get("symmetric", True)
    body = WeightFormat(bits, block, float_bytes, zero_points)
    head_bits = quant.get("lm_head_bits")
    head = WeightFormat(int(head_bits), block, float_bytes, zero_points) if head_bits else None
    return body, head
