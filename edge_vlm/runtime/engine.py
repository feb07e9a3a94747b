"""BundleEngine: answers questions with an exported bundle on ONNX Runtime only (see edge_vlm.engine.Engine).

Nothing here imports torch or transformers (a subprocess test checks it). Preprocessing, the prompt template and the
tokenizer are the same torch-free modules the PyTorch side uses, so both see identical pixels and ids.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge_vlm.engine import IMAGE_PREFIX, NON_FINITE_OUTPUT, GenerationConfig, PreparedImage, prompt_ids
from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageInput, preprocess
from edge_vlm.runtime import providers as eps
from edge_vlm.runtime.bundle import Bundle
from edge_vlm.runtime.decoder import Decoder, KVCache
from edge_vlm.runtime.sampling import Sampler
from edge_vlm.runtime.vision import Vision
from edge_vlm.tokenizer import TextTokenizer, iter_text


class BundleEngine:
    """A bundle answering questions; the image prefix's vision features and KV cache are reused across questions."""

    def __init__(self, bundle: Bundle, providers: list[str] | str | None = None, threads: int | None = None):
        self.bundle = bundle
        model = bundle.model
        # the image tokens the decoder receives per image: every patch token, or the K the export selected
        self.num_image_tokens, self.patch_tokens, self.token_selection = bundle.image_tokens
        self.context_length = int(model["context_length"])
        self.image_config = bundle.image_config
        self.tokenizer = TextTokenizer.from_dir(bundle.file("tokenizer").parent)
        if self.tokenizer.image_token_id != model["image_token_id"]:
            raise EdgeVLMError(
                f"bundle {bundle.path}: the tokenizer's <image> id {self.tokenizer.image_token_id} differs from the "
                f"manifest's {model['image_token_id']}: the bundle is inconsistent, export it again"
            )
        self.eos_token_id = self.tokenizer.eos_token_id
        self.embeddings = _load_embeddings(bundle.file("embeddings"), model)
        chosen = eps.choose(providers)
        options = eps.session_options(threads)
        self.vision = Vision(bundle.file("vision"), chosen["vision"], options, bundle.tensorrt.get("vision"))
        self.decoder = Decoder(bundle.file("decoder"), chosen["decoder"], options, int(model["head_size"]),
                               self.context_length)
        self.providers = {"vision": self.vision.providers, "decoder": self.decoder.providers}
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_bundle(cls, path: str | Path, providers: list[str] | str | None = None, threads: int | None = None,
                    verify: str = "hash") -> BundleEngine:
        """Open and check a bundle directory. `providers` e.g. ['cuda', 'cpu'] (None: TensorRT > CUDA > CPU as
        available); `threads` intra-op threads; `verify` 'hash' (sha256 of every file), 'size' or 'none'."""
        return cls(Bundle.open(path, verify=verify), providers=providers, threads=threads)

    @property
    def random_weights(self) -> bool:
        """True when the bundle was exported from a random-weight checkpoint (its answers mean nothing)."""
        return bool(self.bundle.manifest.get("source", {}).get("random_weights"))

    # ----------------------------------------------------------------------------------------------- building blocks
    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] float32 pixels -> [B, N, D] float32 projected features."""
        return self.vision(pixel_values)

    def embed(self, ids: list[int], features: np.ndarray | None = None, generated: bool = False) -> np.ndarray:
        """Token embeddings [1, len(ids), D], with the image positions replaced by `features` [N, D] in order.
        `generated`: ids the model produced itself; an <image> id among them keeps its own embedding row, as
        transformers does while decoding (a random-weight model can produce it)."""
        if any(token < 0 or token >= self.embeddings.shape[0] for token in ids):
            raise EdgeVLMError(f"internal: a token id is outside the embedding table ({self.embeddings.shape[0]})")
        embeds = np.asarray(self.embeddings[np.asarray(ids, dtype=np.int64)], dtype=np.float32)
        image_positions = np.flatnonzero(np.asarray(ids) == self.tokenizer.image_token_id)
        if image_positions.size and not generated:
            if features is None or features.shape[0] != image_positions.size:
                raise EdgeVLMError(
                    f"the prompt has {image_positions.size} image positions but "
                    f"{0 if features is None else features.shape[0]} image features were given"
                )
            embeds[image_positions] = features
        return embeds[None]

    def prefill(self, ids: list[int], features: np.ndarray | None = None, cache: KVCache | None = None,
                reserve: int = 0) -> tuple[np.ndarray, KVCache]:
        """Run `ids` after `cache` (None: from an empty cache): (last-position logits, grown cache). `reserve`: the
        total length the sequence will reach, so its KV buffers are allocated once (see Decoder.forward)."""
        cache = cache or self.decoder.empty_cache()
        return self.decoder.forward(self.embed(ids, features), cache, reserve=reserve)

    def step(self, token: int, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """One decode step: the logits after `token`, a token the model produced (an <image> id keeps its own
        embedding row, see embed), and the grown cache."""
        return self.decoder.forward(self.embed([token], generated=True), cache)

    # ------------------------------------------------------------------------------------------ the Engine protocol
    def prepare_image(self, image: ImageInput) -> PreparedImage:
        start = time.perf_counter()
        pixels = preprocess(image, self.image_config)[None]
        after_pre = time.perf_counter()
        features = self.image_features(pixels)[0]
        after_vision = time.perf_counter()
        prefix_ids = self.tokenizer.encode_prompt(IMAGE_PREFIX, self.num_image_tokens)
        _, cache = self.prefill(prefix_ids, features)
        done = time.perf_counter()
        timings = {
            "preprocess_ms": (after_pre - start) * 1e3,
            "vision_ms": (after_vision - after_pre) * 1e3,
            "prefix_prefill_ms": (done - after_vision) * 1e3,
        }
        return PreparedImage(features=features, prefix_cache=cache, prefix_ids=prefix_ids, timings_ms=timings)

    def stream(self, prepared: PreparedImage | None, question: str, history: list[tuple[str, str]] | None = None,
               config: GenerationConfig | None = None) -> Iterator[str]:
        config = config or GenerationConfig()
        ids, max_new = prompt_ids(self, prepared, question, history, config.max_new_tokens)
        if prepared is not None:
            rest, cache = ids[len(prepared.prefix_ids):], prepared.prefix_cache
        else:
            rest, cache = ids, None
        yield from iter_text(self.tokenizer, self.generate_ids(rest, cache, max_new, config))

    def generate_ids(self, ids: list[int], cache: KVCache | None, max_new_tokens: int,
                     config: GenerationConfig, features: np.ndarray | None = None) -> Iterator[int]:
        """Token ids of the answer to `ids` (after `cache`), without the EOS, one at a time."""
        start = time.perf_counter()
        past = cache.length if cache is not None else 0
        logits, cache = self.prefill(ids, features, cache, reserve=past + len(ids) + max_new_tokens)
        self.last_timings = {"prefill_ms": (time.perf_counter() - start) * 1e3, "prompt_tokens": len(ids)}
        yield from self.decode(logits, cache, max_new_tokens, config)

    def decode(self, logits: np.ndarray, cache: KVCache, max_new_tokens: int,
               config: GenerationConfig) -> Iterator[int]:
        """Continue from a prefill's last logits and cache: sampled ids (EOS not yielded; it ends the answer when
        config.stop_at_eos). `cache` keeps its contents (new positions go after it, or into a copy), so the same
        prefill can start several answers."""
        sampler = Sampler(config)
        start = time.perf_counter()
        produced = 0
        for _ in range(max_new_tokens):
            if not np.isfinite(logits).all():  # damaged weights answer garbage that looks like an answer
                raise EdgeVLMError(NON_FINITE_OUTPUT)
            token = sampler(logits)
            produced += 1
            if token == self.eos_token_id:
                if config.stop_at_eos:
                    break
            else:
                yield token
            if produced == max_new_tokens or cache.length >= self.context_length:
                break
            logits, cache = self.step(token, cache)
        self.last_timings.update({"decode_ms": (time.perf_counter() - start) * 1e3, "new_tokens": produced})


def _load_embeddings(path: Path, model: dict) -> np.ndarray:
    """The token-embedding table, memory-mapped: only the rows a prompt uses are read from disk."""
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise EdgeVLMError(f"cannot read the embedding table {path}: {exc}; re-export the bundle") from exc
    expected = (int(model["vocab_size"]), int(model["hidden_size"]))
    if table.shape != expected:
        raise EdgeVLMError(f"{path} has shape {table.shape}, the manifest says {expected}: re-export the bundle")
    return table
