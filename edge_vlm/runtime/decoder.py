"""The Phi decoder session: input embeddings + KV cache in, last-position logits + the grown KV cache out.

The graph is onnxruntime-genai's model builder output built with `exclude_embeds` (it takes `inputs_embeds`, so image
features can be spliced in) and `prune_lm_head` (logits of the last position only: a 600-token prefill would otherwise
spend ~157 GFLOP on a [600, 51200] logits matrix nobody reads). Inputs: `inputs_embeds` [1, S, D], `attention_mask`
[1, W], `past_key_values.{i}.key|value` [1, kv_heads, C, head]; outputs `logits` [1, 1, V] and
`present.{i}.key|value` [1, kv_heads, max(W, C), head]. Inside the graph the mask only becomes
seqlens_k = sum(mask) - 1 and total_sequence_length = W, the inputs of GroupQueryAttention (GQA).

KV cache: past/present buffer sharing, as onnxruntime-genai does it (`past_present_share_buffer`). A sequence keeps
per-layer buffers of C positions (C >= past + S: prompt + max new tokens, capped by the context length, or grown in
chunks) and binds the SAME OrtValue as past input and present output. ONNX Runtime's GQA takes the number of valid
positions and the rotary positions from seqlens_k, uses the past tensor's dim 2 only as a stride, and when past and
present are the same memory (the CPU kernel compares the data pointers in gqa_attention_base.h) writes only the S new
keys/values at [past, past + S) and copies nothing. The mask stays [1, past + S] of ones, as genai feeds it on CPU:
ORT 1.32 accepts total_sequence_length = past + S (a "dynamic" cache) or <= C (a "static" one) and nothing else, so a
mask padded to C is rejected, and present's shape is max(total, C) = C, which the bound buffer matches. Without sharing
GQA zero-fills the whole present tensor and copies the past into it every step: 45 % of a full-size Phi-2 decode step.

A KVCache never changes in its valid positions [0, length): runs write only past the newest position ever written
into the buffers (their `end`). A run from an older cache (a cached image prefix starting its second answer, say),
or one that needs more room, first copies the valid positions into new buffers (on the host; through host memory for
a GPU cache) and continues there. So a cached prefix can start many answers, even interleaved ones, at the cost of
one copy of the prefix per answer instead of one copy of the whole cache per token.

Every run goes through IO binding: on CUDA the cache stays on the GPU (only the embeddings of the new tokens go up and
one row of logits comes down); on CPU ONNX Runtime writes straight into numpy arrays the runtime owns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_vlm.errors import EdgeVLMError
from edge_vlm.runtime.providers import device_of, open_session

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
# Capacities are rounded up to a multiple of this: a sequence that outgrows its buffers (no room was reserved)
# is copied once per CHUNK tokens rather than every token.
CHUNK = 256


@dataclass
class _Buffers:
    """One sequence's per-layer K/V buffers, shared by every KVCache cut from them. `end`: how far they have been
    written (positions at or past it belong to no KVCache yet). `host`: the numpy arrays behind CPU buffers."""

    end: int
    host: list | None


@dataclass
class KVCache:
    """The decoder's past keys and values: OrtValues [1, kv_heads, capacity, head] in the session's past-input order,
    of which positions [0, length) are valid. Caches cut from the same buffers share `buffers`."""

    values: list
    length: int
    buffers: _Buffers | None = field(default=None, repr=False)

    @property
    def capacity(self) -> int:
        """Positions the buffers hold (>= length)."""
        return int(self.values[0].shape()[2]) if self.values else 0

    def numpy(self, index: int) -> np.ndarray:
        """The valid part [1, kv_heads, length, head] of the index-th buffer, copied to the host."""
        return self.values[index].numpy()[:, :, : self.length]


_NUMPY_OF = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class Decoder:
    """Runs the decoder step by step for one sequence (batch 1).

    `context_length` bounds the buffers (the graph's rotary tables end there); `share_buffer=False` restores the
    copying behaviour on every step (past L in, a new present of L + S out), kept for side-by-side measurements.
    """

    def __init__(self, path: str | Path, providers: list[str], options, head_size: int, context_length: int,
                 share_buffer: bool = True):
        import onnxruntime

        self.ort = onnxruntime
        self.session = open_session(path, options, providers, "decoder")
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
        self.context_length = int(context_length)
        self.share_buffer = share_buffer

    def empty_cache(self) -> KVCache:
        """A zero-length cache (the prefill of a prompt starts from it)."""
        empty = np.zeros((1, self.kv_heads, 0, self.head_size), dtype=self.dtype)
        values = [self.ort.OrtValue.ortvalue_from_numpy(empty, self.device, 0) for _ in self.past_names]
        return KVCache(values, 0)

    def forward(self, embeds: np.ndarray, cache: KVCache, reserve: int = 0) -> tuple[np.ndarray, KVCache]:
        """Run S new positions after `cache`: (float32 logits of the last position [V], the cache of past + S).

        `cache` stays valid and unchanged. `reserve`: total positions (past included) the sequence is expected to
        reach, so that buffers allocated now are large enough for all of it (capped at the context length)."""
        if embeds.ndim != 3 or embeds.shape[0] != 1 or embeds.shape[2] != self.hidden_size:
            raise EdgeVLMError(f"internal: decoder embeddings must be [1, S, {self.hidden_size}], got {embeds.shape}")
        total = cache.length + embeds.shape[1]
        if total > self.context_length:
            raise EdgeVLMError(f"internal: {total} positions exceed the decoder's context length {self.context_length}")
        embeds = np.ascontiguousarray(embeds, dtype=self.dtype)
        if not self.share_buffer:
            return self._run_copying(embeds, cache)
        buffers = cache.buffers
        if buffers is None or buffers.end != cache.length or total > cache.capacity:
            cache = self._moved(cache, self._capacity_for(total, reserve))
        return self._run_in_place(embeds, cache, total)

    # ------------------------------------------------------------------------------------------------------ runs
    def _bind_common(self, embeds: np.ndarray, total: int, cache: KVCache):
        binding = self.session.io_binding()
        binding.bind_cpu_input("inputs_embeds", embeds)
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        for name, value in zip(self.past_names, cache.values):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        return binding

    def _run_in_place(self, embeds: np.ndarray, cache: KVCache, total: int) -> tuple[np.ndarray, KVCache]:
        binding = self._bind_common(embeds, total, cache)
        for name, value in zip(self.present_names, cache.values):
            binding.bind_ortvalue_output(name, value)  # the past's own OrtValue: GQA sees one buffer
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy().reshape(-1).astype(np.float32, copy=False)
        cache.buffers.end = total
        return logits, KVCache(cache.values, total, cache.buffers)

    def _run_copying(self, embeds: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        # share_buffer=False: ONNX Runtime allocates present tensors of past + S and GQA copies the past into them
        total = cache.length + embeds.shape[1]
        binding = self._bind_common(embeds, total, cache)
        for name in self.present_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits = outputs[0].numpy().reshape(-1).astype(np.float32, copy=False)
        return logits, KVCache(list(outputs[1:]), total)

    # --------------------------------------------------------------------------------------------------- buffers
    def _capacity_for(self, total: int, reserve: int) -> int:
        wanted = -(-max(total, reserve) // CHUNK) * CHUNK
        return max(total, min(wanted, self.context_length))

    def _moved(self, cache: KVCache, capacity: int) -> KVCache:
        """A copy of `cache` in new buffers of `capacity` positions (the cache itself is left as it is)."""
        shape = (1, self.kv_heads, capacity, self.head_size)
        length = cache.length
        host, values = [], []
        for index, value in enumerate(cache.values):
            array = np.zeros(shape, dtype=self.dtype)  # calloc: pages the sequence never reaches cost nothing
            if length:
                source = cache.buffers.host[index] if cache.buffers and cache.buffers.host else value.numpy()
                array[:, :, :length] = source[:, :, :length]
            host.append(array)
            # on CPU the OrtValue wraps the array's memory (no copy); elsewhere it is uploaded once
            values.append(self.ort.OrtValue.ortvalue_from_numpy(array, self.device, 0))
        keep_host = self.device == "cpu"
        return KVCache(values, length, _Buffers(length, host if keep_host else None))


def _layer_order(name: str) -> tuple[int, int]:
    # past_key_values.{i}.key / .value -> (i, 0 for key, 1 for value)
    _, index, kind = name.split(".")
    return int(index), 0 if kind == "key" else 1
