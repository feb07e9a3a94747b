"""The PyTorch engine: answers with a checkpoint through transformers' `generate` (see edge_vlm.engine)."""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from edge_vlm.engine import IMAGE_PREFIX, NON_FINITE_OUTPUT, GenerationConfig, PreparedImage, prompt_ids
from edge_vlm.errors import EdgeVLMError
from edge_vlm.image_tokens import TokenSelection
from edge_vlm.imaging import ImageConfig, ImageInput, preprocess
from edge_vlm.tokenizer import TextTokenizer, iter_text

_DONE = object()


class _TokenQueue(BaseStreamer):
    """Receives tokens from `generate` (running in a worker thread) and hands them to the caller."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.skipped_prompt = False

    def put(self, value):
        if not self.skipped_prompt:  # generate() first pushes the prompt
            self.skipped_prompt = True
            return
        for token in value.reshape(-1).tolist():
            self.queue.put(token)

    def end(self):
        self.queue.put(_DONE)


class _StopWhenSet(StoppingCriteria):
    """Ends `generate` early once the caller stopped reading (the stream was closed or broke)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _RefuseNonFinite(LogitsProcessor):
    """Stops `generate` when the model's scores hold NaN or infinity: damaged weights (or a dtype that overflows)
    would otherwise answer with whatever token the argmax of garbage picks, and look fine."""

    def __call__(self, input_ids, scores):
        if not torch.isfinite(scores).all():
            raise EdgeVLMError(NON_FINITE_OUTPUT)
        return scores


class TorchEngine:
    """A checkpoint answering questions, with the image prefix's KV cache reused across questions."""

    def __init__(self, model, tokenizer: TextTokenizer, image_config: ImageConfig | None = None,
                 token_selection: TokenSelection | None = None):
        """`token_selection`: give the language model K of the image's patch tokens (edge_vlm.image_tokens; None:
        the model's own setting, every patch token unless it was given one)."""
        self.model = model
        self.tokenizer = tokenizer
        self.image_config = image_config or ImageConfig(image_size=model.config.vision_config.image_size)
        if token_selection is not None:
            model.set_token_selection(token_selection)
        self.token_selection = model.token_selection
        self.patch_tokens = model.patch_tokens
        self.num_image_tokens = model.num_image_tokens
        self.context_length = model.config.text_config.max_position_embeddings
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def from_checkpoint(cls, directory: str | Path, dtype=None, device: str | None = None,
                        token_selection: TokenSelection | None = None, **load_kwargs) -> TorchEngine:
        from edge_vlm.model.checkpoint import load_checkpoint

        model, tokenizer, meta = load_checkpoint(directory, dtype=dtype, device=device, **load_kwargs)
        return cls(model, tokenizer, meta.image, token_selection)

    def pixel_values(self, image: ImageInput) -> torch.Tensor:
        pixels = preprocess(image, self.image_config)
        return torch.from_numpy(pixels)[None].to(self.device, self.dtype)

    @torch.no_grad()
    def prepare_image(self, image: ImageInput) -> PreparedImage:
        start = time.perf_counter()
        pixels = self.pixel_values(image)
        after_pre = time.perf_counter()
        features = self.model.image_features(pixels)
        after_vision = time.perf_counter()
        prefix_ids = self.tokenizer.encode_prompt(IMAGE_PREFIX, self.num_image_tokens)
        ids = torch.tensor([prefix_ids], device=self.device)
        embeds = self.model.get_input_embeddings()(ids)
        mask = (ids == self.model.config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, features.to(embeds.dtype))
        out = self.model(inputs_embeds=embeds, use_cache=True)
        done = time.perf_counter()
        timings = {
            "preprocess_ms": (after_pre - start) * 1e3,
            "vision_ms": (after_vision - after_pre) * 1e3,
            "prefix_prefill_ms": (done - after_vision) * 1e3,
        }
        return PreparedImage(features=features, prefix_cache=out.cache, prefix_ids=prefix_ids, timings_ms=timings)

    def stream(self, prepared: PreparedImage | None, question: str, history=None,
               config: GenerationConfig | None = None) -> Iterator[str]:
        config = config or GenerationConfig()
        ids, max_new = prompt_ids(self, prepared, question, history, config.max_new_tokens)
        kwargs = {}
        if prepared is not None:
            kwargs["cache"] = copy.deepcopy(prepared.prefix_cache)
        if config.seed is not None:
            torch.manual_seed(config.seed)
        tokens = _TokenQueue()
        generate_kwargs = dict(
            input_ids=torch.tensor([ids], device=self.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
            max_new_tokens=max_new,
            do_sample=not config.greedy,
            temperature=config.temperature if not config.greedy else None,
            top_p=config.top_p if not config.greedy else None,
            top_k=None,
            eos_token_id=self.tokenizer.eos_token_id if config.stop_at_eos else None,
            pad_token_id=self.tokenizer.eos_token_id,
            streamer=tokens,
            **kwargs,
        )
        yield from iter_text(self.tokenizer, self._run(generate_kwargs, tokens))

    def _run(self, generate_kwargs: dict, tokens: _TokenQueue) -> Iterator[int]:
        errors: list[BaseException] = []
        stop = threading.Event()
        generate_kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhenSet(stop)])
        generate_kwargs["logits_processor"] = LogitsProcessorList([_RefuseNonFinite()])

        def work():
            try:
                with torch.no_grad():
                    self.model.generate(**generate_kwargs)
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
                tokens.end()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while (token := tokens.queue.get()) is not _DONE:
                if token == self.tokenizer.eos_token_id:
                    continue
                yield token
        finally:  # also when the caller closes the stream early: stop generating instead of running on
            stop.set()
            worker.join()
        if errors:
            raise errors[0]
