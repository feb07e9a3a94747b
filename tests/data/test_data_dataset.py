"""The supervised dataset and collate: label masking per reference §4 (checked by decoding the supervised tokens),
segment encoding against transformers' tokenizer on the whole text, pixels against transformers' CLIP processor,
and right padding + image order against transformers' Llava run one sample at a time."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, PreTrainedTokenizerFast

from edge_vlm.data.dataset import SupervisedDataset, collate, default_image_config
from edge_vlm.data.formats import Sample, read_llava_json, read_sharegpt
from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import PAD_COLOR, ImageConfig
from edge_vlm.prompting import EOS_TEXT, IMAGE_PLACEHOLDER, PHI2_SYSTEM, render_chat, render_plain, to_text
from edge_vlm.tokenizer import IGNORE_INDEX

N_IMAGE = 16  # the tiny preset: 56 px / patch 14 = 4 x 4


def _runs(ids: list[int], labels: list[int]) -> list[tuple[int, list[int]]]:
    """Maximal runs of supervised positions: (start, the token ids they hold)."""
    runs: list[tuple[int, list[int]]] = []
    for position, (token, label) in enumerate(zip(ids, labels)):
        if label == IGNORE_INDEX:
            continue
        assert label == token, "a supervised label must be the token at its position"
        if runs and runs[-1][0] + len(runs[-1][1]) == position:
            runs[-1][1].append(token)
        else:
            runs.append((position, [token]))
    return runs


def _dataset(samples, tokenizer, stage, world, size=56, context=2048):
    return SupervisedDataset(samples, tokenizer, stage, world, default_image_config(stage, size), N_IMAGE, context)


def test_stage2_supervised_tokens_are_exactly_the_answers_and_eos(world, world_tokenizer):
    tok = world_tokenizer
    samples = [s for s in read_llava_json(world / "finetune.json") if len(s.turns) >= 2]
    samples += [s for s in read_llava_json(world / "finetune.json") if s.image is None][:3]
    assert len(samples) > 20
    dataset = _dataset(samples, tok, "finetune", world)
    for index, sample in enumerate(samples):
        item = dataset[index]
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        runs = _runs(ids, labels)
        # reference §3/§4: the space after "ASSISTANT:" belongs to the answer, then <|endoftext|>
        assert [tok.decode(run, skip_special_tokens=False) for _, run in runs] == [
            f" {answer}{EOS_TEXT}" for _, answer in sample.turns]
        # no off-by-one: what precedes each answer ends with "ASSISTANT:" (nothing of the answer is masked)
        for start, _ in runs:
            assert tok.decode(ids[:start], skip_special_tokens=False).endswith("ASSISTANT:")
        image_positions = [i for i, t in enumerate(ids) if t == tok.image_token_id]
        assert len(image_positions) == (N_IMAGE if sample.image else 0)
        assert all(labels[i] == IGNORE_INDEX for i in image_positions)
        assert (item["pixel_values"] is not None) == (sample.image is not None)


def test_stage1_supervised_tokens_are_caption_and_newline(world, world_tokenizer):
    tok = world_tokenizer
    samples = read_llava_json(world / "pretrain.json")
    dataset = _dataset(samples, tok, "pretrain", world)
    for index, sample in enumerate(samples[:30]):
        item = dataset[index]
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        assert ids[:N_IMAGE] == [tok.image_token_id] * N_IMAGE and labels[:N_IMAGE] == [IGNORE_INDEX] * N_IMAGE
        assert [tok.decode(run, skip_special_tokens=False) for _, run in _runs(ids, labels)] == [
            sample.turns[0][1] + "\n"]
        assert tok.decode(ids, skip_special_tokens=False) == IMAGE_PLACEHOLDER * N_IMAGE + sample.turns[0][1] + "\n"


def test_sft_is_text_only_chat(world, world_tokenizer):
    samples = read_sharegpt(world / "sft.json")
    dataset = _dataset(samples, world_tokenizer, "sft", world)
    item = dataset[0]
    text = world_tokenizer.decode(item["input_ids"].tolist(), skip_special_tokens=False)
    assert text.startswith(PHI2_SYSTEM + " USER: " + samples[0].turns[0][0]) and IMAGE_PLACEHOLDER not in text
    assert item["pixel_values"] is None


def test_segment_encoding_equals_transformers_on_the_whole_text(world, world_tokenizer, tmp_path):
    """encode_segments encodes piece by piece; transformers' fast tokenizer encodes the rendered text at once."""
    world_tokenizer.save(tmp_path)
    reference = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    cases = []
    for sample in read_llava_json(world / "finetune.json"):
        cases.append(render_chat(sample.turns, has_image=sample.image is not None))
    for sample in read_llava_json(world / "pretrain.json")[:20]:
        cases.append(render_plain(sample.turns[0][1]))
    cases.append(render_chat([("odd  spacing\n\n?", "two words"), ("ünïcode ✓", "ok")]))
    for segments in cases:
        ids, labels = world_tokenizer.encode_segments(segments, num_image_tokens=1)
        assert ids == reference(to_text(segments), add_special_tokens=False)["input_ids"]
        assert len(labels) == len(ids)


def test_pixels_follow_the_stage_aspect_mode(world, world_tokenizer, tmp_path):
    """Stage 1 crops ('square'), stage 2 pads with the CLIP mean colour ('pad'); compared with transformers' CLIP
    processor (for 'pad', on an image padded by hand)."""
    wide = Image.new("RGB", (120, 60), (200, 10, 10))
    wide.save(tmp_path / "wide.png")
    sample = Sample("w", "wide.png", [("Q?", "A")], image_tags=1)
    clip = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    square = _dataset([sample], world_tokenizer, "pretrain", tmp_path)[0]["pixel_values"]
    assert torch.allclose(square, torch.from_numpy(clip(wide, return_tensors="np")["pixel_values"][0]), atol=1e-5)
    padded_by_hand = Image.new("RGB", (120, 120), PAD_COLOR)
    padded_by_hand.paste(wide, (0, 30))
    padded = _dataset([sample], world_tokenizer, "finetune", tmp_path)[0]["pixel_values"]
    assert torch.allclose(padded, torch.from_numpy(clip(padded_by_hand, return_tensors="np")["pixel_values"][0]),
                          atol=1e-5)


def test_too_long_and_wrong_stage_raise(world, world_tokenizer):
    image_sample = read_llava_json(world / "finetune.json")[0]
    with pytest.raises(EdgeVLMError, match="more than the context"):
        _dataset([image_sample], world_tokenizer, "finetune", world, context=N_IMAGE)[0]
    text_sample = Sample("t", None, [("q", "a")])
    with pytest.raises(EdgeVLMError, match="needs an image"):
        _dataset([text_sample], world_tokenizer, "pretrain", world)[0]
    with pytest.raises(EdgeVLMError, match="text-only"):
        _dataset([Sample("i", "x.png", [("q", "a")])], world_tokenizer, "sft", world)[0]
    with pytest.raises(EdgeVLMError, match="stage"):
        SupervisedDataset([], world_tokenizer, "stage3", None, ImageConfig(56), N_IMAGE, 64)


def _mixed_batch(world, tokenizer):
    """text-only, image A, text-only, image B (different lengths)."""
    samples = read_llava_json(world / "finetune.json")
    with_image = [s for s in samples if s.image][:2]
    text_only = [s for s in samples if not s.image][:2]
    ordered = [text_only[0], with_image[0], text_only[1], with_image[1]]
    dataset = _dataset(ordered, tokenizer, "finetune", world)
    return [dataset[i] for i in range(4)]


def test_collate_pads_right_and_keeps_image_order(world, world_tokenizer):
    items = _mixed_batch(world, world_tokenizer)
    pad = world_tokenizer.eos_token_id
    batch = collate(items, pad_id=pad)
    longest = max(len(item["input_ids"]) for item in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, longest)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert torch.equal(batch["labels"][row, :n], item["labels"])
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert (batch["input_ids"][row, n:] == pad).all() and (batch["labels"][row, n:] == IGNORE_INDEX).all()
    assert torch.equal(batch["pixel_values"], torch.stack([items[1]["pixel_values"], items[3]["pixel_values"]]))
    text_batch = collate([items[0], items[2]], pad_id=pad)
    assert text_batch["pixel_values"] is None


def test_collated_batch_matches_transformers_llava_one_sample_at_a_time(world, world_tokenizer):
    """transformers' Llava fills the image-token runs of a batch with the stacked images in order: if collate
    ordered them wrongly, or padded on the wrong side, the batched logits would differ from the single ones."""
    from edge_vlm.model.factory import random_model

    items = _mixed_batch(world, world_tokenizer)
    assert not torch.equal(items[1]["pixel_values"], items[3]["pixel_values"])
    model = random_model("tiny", world_tokenizer, seed=0, weight_std=0.05, vocab_size=len(world_tokenizer)).eval()
    batch = collate(items, pad_id=world_tokenizer.eos_token_id)
    with torch.no_grad():
        batched = model(**batch).logits
        for row, item in enumerate(items):
            single = collate([item], pad_id=world_tokenizer.eos_token_id)
            logits = model(**single).logits[0]
            n = len(item["input_ids"])
            assert torch.allclose(batched[row, :n], logits, atol=1e-4), f"row {row} differs"
        # and the images really matter: swapping them changes the answers' logits
        swapped = dict(batch, pixel_values=batch["pixel_values"].flip(0))
        assert not torch.allclose(model(**swapped).logits[1], batched[1], atol=1e-4)
        loss = model(**batch).loss
    assert torch.isfinite(loss)
