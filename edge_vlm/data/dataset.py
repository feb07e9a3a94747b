"""The supervised dataset of the three training stages, and the collate function.

Stages (docs/prompts.md, docs/recipe.md):
- "sft": text-only conversations (ShareGPT), phi-2_v0 template without an image;
- "pretrain" (stage 1): `plain` template `<image>{caption}\\n`, caption = the first answer; LLaVA's stage 1 keeps
  CLIP's resize + center crop (ImageConfig aspect "square"), see `default_image_config`;
- "finetune" (stage 2): phi-2_v0 template, images padded to a square (aspect "pad"), text-only samples allowed.
Labels come from TextTokenizer.encode_segments: every answer and its `<|endoftext|>` (stage 2) or the caption and
its newline (stage 1) are supervised, everything else is -100, image positions always.
Images are loaded lazily, one per __getitem__, so a 665k-sample file costs memory for its text only. A picture that
cannot be read (truncated, empty, not a picture, over the size bound: edge_vlm.imaging) stops the run with one line
naming the sample and the file (`on_bad_sample="stop"`), or is skipped (`"skip"`): the sample is replaced by a stand-in
that trains nothing, a line on stderr names it, and `skipped` counts it. A resumed run reads the same samples again,
so it skips the same ones.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from edge_vlm.data.formats import Sample
from edge_vlm.data.validate import POLICIES, STAGES, render_sample, resolve_image
from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageConfig, preprocess
from edge_vlm.tokenizer import IGNORE_INDEX, TextTokenizer


def default_image_config(stage: str, image_size: int) -> ImageConfig:
    """LLaVA's defaults: stage 1 without padding ('square'), stage 2 (and text-only SFT) padded ('pad')."""
    return ImageConfig(image_size=image_size, aspect="square" if stage == "pretrain" else "pad")


class SupervisedDataset(Dataset):
    """Samples -> {"input_ids": LongTensor[T], "labels": LongTensor[T], "pixel_values": FloatTensor[3,S,S] | None}.

    Run edge_vlm.data.validate.validate first: a sample longer than `context_length` raises here rather than being
    truncated (truncation could cut the answer or the image tokens away without anyone noticing).
    `on_bad_sample`: what an unreadable picture does, "stop" (raise) or "skip" (a stand-in item, see the module doc).
    """

    def __init__(self, samples: Sequence[Sample], tokenizer: TextTokenizer, stage: str,
                 image_root: str | Path | None = None, image_config: ImageConfig | None = None,
                 num_image_tokens: int = 576, context_length: int = 2048, on_bad_sample: str = "stop"):
        if stage not in STAGES:
            raise EdgeVLMError(f"unknown stage {stage!r}; choose one of {STAGES}")
        if on_bad_sample not in POLICIES:
            raise EdgeVLMError(f"on_bad_sample must be one of {POLICIES}, got {on_bad_sample!r}")
        if num_image_tokens <= 0 or context_length <= 0:
            raise EdgeVLMError(f"num_image_tokens ({num_image_tokens}) and context_length ({context_length}) "
                               "must be positive")
        self.samples = list(samples)
        self.tokenizer = tokenizer
        self.stage = stage
        self.image_root = Path(image_root) if image_root is not None else None
        self.image_config = image_config or default_image_config(stage, 336)
        self.num_image_tokens = num_image_tokens
        self.context_length = context_length
        self.on_bad_sample = on_bad_sample
        self.skipped: dict[str, str] = {}  # sample id -> why (in this process: DataLoader workers keep their own)

    def __len__(self) -> int:
        return len(self.samples)

    def uses_image(self, sample: Sample) -> bool:
        if self.stage == "sft":
            if sample.has_image:
                raise EdgeVLMError(f"sample {sample.id}: stage 'sft' is text-only but the sample has an image "
                                   f"({sample.image}); validate the data first")
            return False
        if self.stage == "pretrain" and not sample.has_image:
            raise EdgeVLMError(f"sample {sample.id}: stage 'pretrain' needs an image; validate the data first")
        return sample.has_image

    def tokens(self, index: int) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one sample as lists, without loading its image."""
        sample = self.samples[index]
        self.uses_image(sample)
        ids, labels = self.tokenizer.encode_segments(render_sample(sample, self.stage), self.num_image_tokens)
        if len(ids) > self.context_length:
            raise EdgeVLMError(f"sample {sample.id} is {len(ids)} tokens, more than the context ({self.context_length});"
                               " validate the data (on_error='skip') to drop it")
        return ids, labels

    def length_estimate(self, index: int) -> int:
        """A cheap stand-in for the token count, to group batches by (LLaVA's `modality_lengths`: the words of every
        turn, plus the image's tokens); exact counts would tokenize the whole dataset before the first step."""
        sample = self.samples[index]
        words = sum(len(question.split()) + len(answer.split()) for question, answer in sample.turns)
        return words + (self.num_image_tokens if sample.has_image else 0)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        ids, labels = self.tokens(index)
        pixel_values = None
        if self.uses_image(sample):
            path = resolve_image(sample.image, self.image_root)
            try:
                pixel_values = torch.from_numpy(preprocess(path, self.image_config))
            except EdgeVLMError as exc:
                return self._bad_picture(sample, exc)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": pixel_values,
        }


    def _bad_picture(self, sample: Sample, error: EdgeVLMError) -> dict:
        if self.on_bad_sample == "stop":
            raise EdgeVLMError(f"sample {sample.id}: {error}; fix or remove the sample, or set on_bad_sample: skip "
                               "to train without it") from error
        if sample.id not in self.skipped:
            self.skipped[sample.id] = str(error)
            print(f"skipped sample {sample.id} (on_bad_sample: skip; {len(self.skipped)} so far): {error}",
                  file=sys.stderr, flush=True)
        return self.stand_in()

    def stand_in(self) -> dict:
        """What a skipped sample becomes: one token, no label and no picture. It adds no supervised token to the loss
        (which is a mean over supervised tokens) and keeps the batch's shape rules (no image tokens, no pixels)."""
        return {
            "input_ids": torch.tensor([self.tokenizer.eos_token_id], dtype=torch.long),
            "labels": torch.tensor([IGNORE_INDEX], dtype=torch.long),
            "pixel_values": None,
        }


def collate(batch: Sequence[dict], pad_id: int) -> dict:
    """Pad a list of dataset items on the right into a batch.

    input_ids are padded with `pad_id`, labels with -100, attention_mask is 1 on real tokens. pixel_values stacks the
    images of the samples that have one, in batch order (None when none has): transformers' Llava fills the image
    token runs of the flattened batch in that order, and each sample holds at most one run.
    """
    if not batch:
        raise ValueError("collate needs at least one item")
    longest = max(item["input_ids"].shape[0] for item in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, item in enumerate(batch):
        length = item["input_ids"].shape[0]
        input_ids[row, :length] = item["input_ids"]
        labels[row, :length] = item["labels"]
        attention_mask[row, :length] = 1
    images = [item["pixel_values"] for item in batch if item.get("pixel_values") is not None]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "pixel_values": torch.stack(images) if images else None,
    }
