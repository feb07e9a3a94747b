"""The PyTorch backend: a checkpoint (or a preset built in memory) in fp32 / bf16 / fp16, or bitsandbytes int8 / nf4.

The stages call the model's own modules directly rather than `generate`, so each one can be timed and the decode
runs exactly --new-tokens steps whatever the tokens are. `logits_to_keep=1` computes the lm_head for the last
position only, as the ONNX decoder does (its lm_head is pruned the same way).
"""

from __future__ import annotations

import inspect

import torch

from edge_vlm.bench.artifacts import checkpoint_artifacts, image_tokens_info
from edge_vlm.bench.roofline import DecodeBytes, kv_cache_bytes
from edge_vlm.bench.settings import BackendSpec, BenchSettings
from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageConfig, preprocess

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _load_bitsandbytes(directory: str, bits: str, device: str):
    """(model, tokenizer, meta) with the decoder's matmuls in bitsandbytes int8 / nf4, through the export package's
    loader (one definition of the skip list for `ask` and `bench`: vision, projector and lm_head stay float, and in
    nf4 on CPU so do the layers bitsandbytes' CPU kernel cannot pack)."""
    from edge_vlm.export.bnb import load_quantized
    from edge_vlm.model.checkpoint import read_meta
    from edge_vlm.tokenizer import TextTokenizer

    compute = torch.float16 if device == "cuda" else torch.float32
    device_map = {"": 0} if device == "cuda" else {"": "cpu"}
    model = load_quantized(directory, 4 if bits == "nf4" else 8, compute_dtype=compute, device_map=device_map)
    return model, TextTokenizer.from_dir(directory), read_meta(directory)


def torch_decode_bytes(model, context: float) -> DecodeBytes:
    """Bytes one decode step reads, from the loaded parameters (packed bitsandbytes weights and their scales too)."""
    language = model.model.language_model
    embed = language.embed_tokens.weight
    matmuls = vectors = 0
    for name, param in language.named_parameters():
        if name.startswith("embed_tokens."):
            continue
        nbytes = param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)  # bitsandbytes 4-bit: per-block absmax (+ nested state)
        if state is not None:
            nbytes += state.absmax.numel() * state.absmax.element_size()
            nested = getattr(state, "state2", None)
            if nested is not None:
                nbytes += nested.absmax.numel() * nested.absmax.element_size()
        scb = getattr(param, "SCB", None)  # bitsandbytes int8: one scale per row
        if scb is not None:
            nbytes += scb.numel() * scb.element_size()
        if param.ndim >= 2:
            matmuls += nbytes
        else:
            vectors += nbytes
    lm_head = model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    if model.lm_head.bias is not None:
        vectors += model.lm_head.bias.numel() * model.lm_head.bias.element_size()
    text = model.config.text_config.to_dict()
    kv_bytes = torch.finfo(_compute_dtype(model)).bits // 8
    return DecodeBytes(
        matmul_weights=matmuls,
        lm_head=lm_head,
        vectors=vectors,
        embedding_row=embed.shape[1] * embed.element_size(),
        kv_cache=kv_cache_bytes(text, context, kv_bytes),
        context=context,
        source="torch parameters of the loaded model",
    )


def _compute_dtype(model) -> torch.dtype:
    return model.lm_head.weight.dtype


class TorchBackend:
    def __init__(self, spec: BackendSpec, settings: BenchSettings):
        self.spec, self.settings = spec, settings
        self.device = settings.device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EdgeVLMError("--device cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
        if spec.bitsandbytes and not settings.model:
            raise EdgeVLMError(f"{spec.name} loads a checkpoint through bitsandbytes: give --model DIR (write a "
                               "random one with edge_vlm.model.factory.write_random_checkpoint)")
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.random_weights = settings.random_weights
        self.source = ""

    # -------------------------------------------------------------------------------------------------- loading
    def load(self) -> None:
        settings, spec = self.settings, self.spec
        if settings.model:
            from edge_vlm.model.checkpoint import load_checkpoint

            if spec.bitsandbytes:
                model, tokenizer, meta = _load_bitsandbytes(settings.model, spec.precision, self.device)
            else:
                model, tokenizer, meta = load_checkpoint(settings.model, dtype=_DTYPES[spec.precision])
                model = model.to(self.device)
            self.random_weights = self.random_weights or meta.random_weights
            self.image_config = meta.image or ImageConfig(image_size=model.config.vision_config.image_size)
            self.source = f"checkpoint {settings.model}"
        else:
            from edge_vlm.model.factory import random_model, small_tokenizer

            tokenizer = small_tokenizer()
            model = random_model(settings.preset, tokenizer, weight_std=None)
            model = model.to(self.device, _DTYPES[spec.precision]).eval()
            self.random_weights = True
            self.image_config = ImageConfig(image_size=model.config.vision_config.image_size)
            self.source = f"preset {settings.preset} built in memory (random init)"
        if settings.image_tokens is not None or settings.contextual_tokens is not None:
            from edge_vlm.image_tokens import choose

            model.set_token_selection(choose(settings.image_tokens, settings.contextual_tokens, model.patch_tokens))
        self.model, self.tokenizer = model, tokenizer
        self.num_image_tokens = model.num_image_tokens
        self.context_length = model.config.text_config.max_position_embeddings
        self.image_token_id = model.config.image_token_id
        self.dtype = _compute_dtype(model)
        self.embed_tokens = model.get_input_embeddings()
        # transformers renamed `past_key_values` to `cache` in 5.x; older 5.x releases (e.g. on GPU images) take
        # the old name
        self.cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    # --------------------------------------------------------------------------------------------------- stages
    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def preprocess(self, image):
        pixels = preprocess(image, self.image_config)
        return torch.from_numpy(pixels)[None].to(self.device, self.dtype)

    @torch.inference_mode()
    def vision(self, pixels):
        return self.model.image_features(pixels)[0]

    @torch.inference_mode()
    def prefill(self, ids: list[int], features, reserve: int = 0):  # reserve: transformers' cache grows by itself
        ids_t = torch.tensor([ids], device=self.device)
        embeds = self.embed_tokens(ids_t)
        mask = (ids_t == self.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, features.to(embeds.dtype))
        out = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax()), _cache_of(out)

    @torch.inference_mode()
    def decode(self, token: int, cache):
        ids_t = torch.tensor([[token]], device=self.device)
        out = self.model(input_ids=ids_t, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: cache})
        return int(out.logits[0, -1].argmax()), _cache_of(out)

    # ------------------------------------------------------------------------------------------------ reporting
    def decode_bytes(self, context: float) -> DecodeBytes:
        return torch_decode_bytes(self.model, context)

    def peak_gpu_bytes(self) -> int | None:
        return int(torch.cuda.max_memory_allocated()) if self.device == "cuda" else None

    def describe(self) -> dict:
        import transformers

        info = {
            "library": "torch",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": self.device,
            "threads": torch.get_num_threads(),
            "source": self.source,
            "random_weights": self.random_weights,
            "image_tokens": image_tokens_info(self.num_image_tokens, self.model.patch_tokens,
                                              self.model.token_selection),
            "artifacts": checkpoint_artifacts(self.settings.model) if self.settings.model else
            {"kind": "in-memory", "parameters_bytes": sum(p.numel() * p.element_size() for p in self.model.parameters())},
        }
        if self.device == "cuda":
            info["gpu"] = torch.cuda.get_device_name()
        if self.spec.bitsandbytes:
            import bitsandbytes

            info["versions"]["bitsandbytes"] = bitsandbytes.__version__
            # decoder Linear layers the loader kept in float (nf4 on a CPU whose bitsandbytes kernel cannot pack them):
            # their weights count at full width in decode_bytes
            info["bitsandbytes_float_layers"] = sum(
                type(m) is torch.nn.Linear for m in self.model.model.language_model.modules())
        return info


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values

