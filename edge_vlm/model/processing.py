"""The processor: prompts and images -> model inputs (input_ids, attention_mask, pixel_values) for a batch.

Built from the torch-free pieces (tokenizer, templates, imaging) so that training, evaluation and the runtime all
tokenize and preprocess identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageConfig, ImageInput, preprocess_batch
from edge_vlm.prompting import IMAGE_PLACEHOLDER, inference_prompt
from edge_vlm.tokenizer import TextTokenizer


class LlavaPhiProcessor:
    def __init__(self, tokenizer: TextTokenizer, image_config: ImageConfig, num_image_tokens: int):
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.num_image_tokens = num_image_tokens

    @classmethod
    def from_dir(cls, directory: str | Path) -> LlavaPhiProcessor:
        """From a checkpoint directory (tokenizer.json, config.json, edge_vlm.json)."""
        import json

        from edge_vlm.model.checkpoint import check_checkpoint_dir, read_meta

        path = check_checkpoint_dir(directory)
        config = json.loads((path / "config.json").read_text())
        return cls(TextTokenizer.from_dir(path), read_meta(path).image, int(config["image_seq_length"]))

    def __call__(self, prompts: Sequence[str], images: Sequence[ImageInput] | None = None,
                 padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Full prompt texts (each with at most one `<image>`) and the images in order of appearance.
        Left padding (the default) suits batched generation; training uses right padding."""
        if padding_side not in ("left", "right"):
            raise EdgeVLMError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        images = list(images or [])
        wanted = sum(prompt.count(IMAGE_PLACEHOLDER) for prompt in prompts)
        if wanted != len(images):
            raise EdgeVLMError(f"the prompts hold {wanted} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images "
                               "were given")
        rows = [self.tokenizer.encode_prompt(prompt, self.num_image_tokens) for prompt in prompts]
        width = max(len(row) for row in rows)
        ids = np.full((len(rows), width), self.tokenizer.eos_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[i, span], mask[i, span] = row, 1
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if images:
            batch["pixel_values"] = torch.from_numpy(preprocess_batch(images, self.image_config))
        return batch

    def questions(self, questions: Sequence[str], images: Sequence[ImageInput | None]) -> dict[str, torch.Tensor]:
        """Convenience: one first-turn question per image (None for text-only) with the phi-2_v0 template."""
        prompts = [inference_prompt(q, has_image=image is not None) for q, image in zip(questions, images)]
        return self([*prompts], [image for image in images if image is not None])
