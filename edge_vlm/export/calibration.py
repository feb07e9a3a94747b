"""Calibration inputs for GPTQ: real image + text samples (LLaVA format) run through the exported vision part, so the
decoder is calibrated on the embeddings it will see at run time (image features spliced between text embeddings),
not on text alone.

Each sample becomes one decoder feed: the whole conversation (system prompt, `<image>`, questions and answers) as
`inputs_embeds`, an all-ones attention mask and an empty KV cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_vlm.errors import EdgeVLMError
from edge_vlm.export.samples import ExportSample


class DecoderCalibration:
    """An ONNX Runtime CalibrationDataReader over precomputed decoder feeds (iterable, and copyable as GPTQ needs)."""

    def __init__(self, feeds: list[dict]):
        if not feeds:
            raise EdgeVLMError("no calibration samples")
        self.feeds = feeds
        self._position = 0

    def get_next(self) -> dict | None:
        if self._position >= len(self.feeds):
            return None
        self._position += 1
        return self.feeds[self._position - 1]

    def rewind(self) -> None:
        self._position = 0

    def __iter__(self):
        return iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


def build_calibration(bundle_dir: Path, decoder_onnx: Path, samples: list[ExportSample], model_info: dict,
                      image_config, progress=None, max_tokens: int | None = None) -> DecoderCalibration:
    """Feeds for `decoder_onnx` from `samples`, using the bundle's vision.onnx, embeddings.npy and tokenizer."""
    import onnxruntime

    from edge_vlm.imaging import preprocess
    from edge_vlm.prompting import render_chat, to_text
    from edge_vlm.runtime.providers import CPU, session_options
    from edge_vlm.runtime.vision import Vision
    from edge_vlm.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_dir(bundle_dir)
    table = np.load(bundle_dir / "embeddings.npy", mmap_mode="r")
    vision = Vision(bundle_dir / "vision.onnx", [CPU], session_options())
    decoder = onnxruntime.InferenceSession(str(decoder_onnx), providers=[CPU])
    inputs = {i.name: i for i in decoder.get_inputs()}
    dtype = np.float16 if inputs["inputs_embeds"].type == "tensor(float16)" else np.float32
    past_names = [name for name in inputs if name.startswith("past_key_values.")]
    empty = np.zeros((1, model_info["num_kv_heads"], 0, model_info["head_size"]), dtype=dtype)
    max_tokens = max_tokens or model_info["context_length"]
    feeds = []
    for sample in progress(samples, desc="calibration inputs", unit="sample") if progress else samples:
        text = to_text(render_chat(list(sample.turns), has_image=sample.image is not None))
        ids = tokenizer.encode_prompt(text, model_info["num_image_tokens"])[:max_tokens]
        embeds = np.asarray(table[np.asarray(ids)], dtype=np.float32)
        if sample.image is not None:
            features = vision(preprocess(sample.image, image_config)[None])[0]
            positions = np.flatnonzero(np.asarray(ids) == tokenizer.image_token_id)
            embeds[positions] = features[: positions.size]
        feed = {"inputs_embeds": embeds[None].astype(dtype), "attention_mask": np.ones((1, len(ids)), np.int64)}
        feed.update({name: empty for name in past_names})
        feeds.append(feed)
    return DecoderCalibration(feeds)
