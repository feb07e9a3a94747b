"""The supervised dataset and collate: label masking per docs/prompts.md (checked by decoding the supervised tokens),
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
        # docs/prompts.md: the space after "ASSISTANT:" belongs to the answer, then <|endoftext|>
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


# ------------------------------------------------------------------------------------------------ unreadable pictures


def _with_damaged_pictures(world, tmp_path, kinds=("truncated_png", "bomb")):
    """The world's first image samples, plus one sample per damaged picture (its own file, under the image root)."""
    from tests.data.pictures import write_damaged

    damaged = write_damaged(tmp_path / "damaged")
    good = [s for s in read_llava_json(world / "finetune.json") if s.image is not None][:3]
    bad = [Sample(f"bad-{kind}", str(damaged[kind]), [("What is it?", "a picture")], image_tags=1) for kind in kinds]
    return good + bad, damaged


def test_an_unreadable_picture_stops_with_the_sample_and_the_file(world, world_tokenizer, tmp_path):
    samples, damaged = _with_damaged_pictures(world, tmp_path)
    dataset = _dataset(samples, world_tokenizer, "finetune", world)
    assert dataset[0]["pixel_values"] is not None
    for index, kind in ((3, "truncated_png"), (4, "bomb")):
        with pytest.raises(EdgeVLMError) as info:
            dataset[index]
        message = str(info.value)
        assert f"sample bad-{kind}" in message and str(damaged[kind]) in message and "on_bad_sample" in message
        assert "\n" not in message


def test_skip_replaces_an_unreadable_picture_by_a_stand_in_that_trains_nothing(world, world_tokenizer, tmp_path,
                                                                               capsys):
    samples, damaged = _with_damaged_pictures(world, tmp_path)
    dataset = SupervisedDataset(samples, world_tokenizer, "finetune", world, default_image_config("finetune", 56),
                                N_IMAGE, 2048, on_bad_sample="skip")
    items = [dataset[i] for i in range(len(samples))]
    for item in items[3:]:
        assert item["pixel_values"] is None and item["labels"].tolist() == [IGNORE_INDEX]
        assert world_tokenizer.image_token_id not in item["input_ids"].tolist()
    assert sorted(dataset.skipped) == ["bad-bomb", "bad-truncated_png"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "skipped sample bad-truncated_png" in err[0] and str(damaged["bomb"]) in err[1]
    dataset[3]  # a second read (the next epoch, a resume) skips again without repeating the line
    assert capsys.readouterr().err == "" and len(dataset.skipped) == 2
    # a batch with stand-ins keeps the good pictures and their supervised tokens
    batch = collate(items, pad_id=world_tokenizer.eos_token_id)
    assert batch["pixel_values"].shape[0] == 3
    assert (batch["labels"][3:] == IGNORE_INDEX).all() and (batch["labels"][:3] != IGNORE_INDEX).any()
    with pytest.raises(EdgeVLMError, match="on_bad_sample"):
        SupervisedDataset(samples, world_tokenizer, "finetune", world, on_bad_sample="ignore")


def test_training_skips_unreadable_pictures_and_a_resume_gets_past_them(tiny_checkpoint, tmp_path, capfd):
    """A tiny finetune run on data with truncated, bomb, empty and text 'pictures' (on_bad_sample: skip) trains to the
    end; after a crash (simulated: the later checkpoints and final/ removed) a resume reads them again and skips them
    again instead of stopping there."""
    import json
    import shutil

    from edge_vlm.train import state
    from edge_vlm.train.config import TrainConfig
    from edge_vlm.train.loop import train
    from edge_vlm.train.records import read_metrics
    from tests.data.pictures import write_damaged
    from tests.train.world import write_tiny_world

    world = write_tiny_world(tmp_path / "world", n_images=6)
    damaged = write_damaged(world / "damaged")
    records = [r for r in json.loads((world / "finetune.json").read_text()) if "image" in r]
    for kind, path in damaged.items():
        records.append({"id": f"bad-{kind}", "image": str(path.relative_to(world)), "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the square?"}, {"from": "gpt", "value": "red"}]})
    (world / "finetune.json").write_text(json.dumps(records))  # 6 good + 5 unreadable: 3 steps of 4
    config = TrainConfig(stage="finetune", init_from=str(tiny_checkpoint), data_path=str(world / "finetune.json"),
                         global_batch_size=4, per_device_batch_size=4, lr=1e-3, num_epochs=1, save_every_steps=1,
                         keep_checkpoints=0, output_dir=str(tmp_path / "run"), progress=False, plot=False,
                         num_threads=1, on_bad_sample="skip")
    capfd.readouterr()
    result = train(config)
    err = capfd.readouterr().err
    assert result.steps == 3 and all(loss == loss for loss in result.losses)  # finished, no NaN
    skipped = {line.split()[2] for line in err.splitlines() if line.startswith("skipped sample")}
    # empty files are dropped by validation (one stat), the others when read
    assert skipped == {"bad-truncated_png", "bad-truncated_jpeg", "bad-text", "bad-bomb"}, err
    assert "bad_image: 1" in err and "bad-empty" in err

    out = tmp_path / "run"
    for later in state.list_checkpoints(out)[1:]:
        shutil.rmtree(later)
    shutil.rmtree(out / "final")
    resumed = train(config, resume=True)
    err = capfd.readouterr().err
    assert resumed.steps == 3 and [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    again = {line.split()[2] for line in err.splitlines() if line.startswith("skipped sample")}
    assert again and again <= skipped  # the steps after the resume held unreadable pictures, skipped again
    assert resumed.losses[1:] == result.losses[1:]
