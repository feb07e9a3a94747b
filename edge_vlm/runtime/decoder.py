"""The Phi decoder session: input embeddings + KV cache in, last-position logits + the grown KV cache out.

The graph is onnxruntime-genai's model builder output built with `exclude_embeds` (it takes `inputs_embeds`, so image
features can be spliced in) and `prune_lm_head` (logits of the last position only: a 600-token prefill would otherwise
spend ~157 GFLOP on a [600, 51200] logits matrix nobody reads). Inputs: `inputs_embeds` [1, S, D], `attention_mask`
[1, past + S], `past_key_values.{i}.key|value` [1, kv_heads, past, head]; outputs `logits` [1, 1, V] and
`present.{i}.key|value` [1, kv_heads, past + S, head].

Every run goes through IO binding: on CUDA the cache stays on the GPU between steps (only the embeddings of the new
tokens go up and one row of logits comes down); on CPU the same code keeps ONNX Runtime's own buffers, with no copies.
The cache values are never written to by a run, so a cached prefix can be the start of many answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_vlm.errors import EdgeVLMError
from edge_vlm.runtime.providers import device_of

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."


@dataclass
class KVCache:
    """The decoder's past keys and values (ONNX Runtime OrtValues, in the session's past-input order)."""

    values: list
    length: int


_NUMPY_OF = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class Decoder:
    """Runs the decoder step by step for one sequence (batch 1)."""

    def __init__(self, path: str | Path, providers: list[str], options, head_size: int):
        import onnxruntime

        self.ort = onnxruntime
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for a bad or truncated file
            raise EdgeVLMError(
                f"ONNX Runtime cannot load the decoder {path}: {exc}. The file may be truncated or damaged: "
                "re-export the bundle"
            ) from exc
        self.providers = self.session.get_providers()
        self.device = device_of(self.providers)
        inputs = {i.name: i for i in self.session.get_inputs()}
        for name in ("inputs_embeds", "attention_mask"):
            if name not in inputs:
                raise EdgeVLMError(f"the decoder {path} has no {name!r} input: it was not built by edge-vlm export")
        self.past_names = sorted((n for n in inputs if n.startswith(PAST_PREFIX)), key=_layer_order)
        self.present_names = [PRESENT_PREFIX + n[len(PAST_PREFIX):] for n in self.past_names]
        embeds = inputs["inputs_embeds"]
        self.dtype = _NUMPY_OF.get(embeds.type)
        if self.dtype is None:
            raise EdgeVLMError(f"the decoder {path} takes {embeds.type} embeddings; expected float or float16")
        self.hidden_size = int(embeds.shape[-1])
        if not self.past_names:
            raise EdgeVLMError(f"the decoder {path} has no KV-cache inputs: it was not built by edge-vlm export")
        self.kv_heads = int(inputs[self.past_names[0]].shape[1])
        self.head_size = head_size  # the graph names this dimension symbolically; the manifest records it

    def empty_cache(self) -> KVCache:
        """A zero-length cache (the prefill of a prompt starts from it)."""
        empty = np.zeros((1, self.kv_heads, 0, self.head_size), dtype=self.dtype)
        values = [self.ort.OrtValue.ortvalue_from_numpy(empty, self.device, 0) for _ in self.past_names]
        return KVCache(values, 0)

    def forward(self, embeds: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """Run S new positions after `cache`: (float32 logits of the last position [V], the cache of past + S)."""
        if embeds.ndim != 3 or embeds.shape[0] != 1 or embeds.shape[2] != self.hidden_size:
            raise EdgeVLMError(f"internal: decoder embeddings must be [1, S, {self.hidden_size}], got {embeds.shape}")
        total = cache.length + embeds.shape[1]
        binding = self.session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=self.dtype))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        for name, value in zip(self.past_names, cache.values):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits = outputs[0].numpy().reshape(-1).astype(np.float32, copy=False)
        return logits, KVCache(list(outputs[1:]), total)


def _layer_order(name: str) -> tuple[int, int]:
    # past_key_values.{i}.key / .value -> (i, 0 for key, 1 for value)
    _, index, kind = name.split(".")
    return int(index), 0 if kind == "key" else 1
