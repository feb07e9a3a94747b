"""Validation: each problem kind is caught with the right count and ids, under both policies, never silently."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from transformers import PreTrainedTokenizerFast

from edge_vlm.data.formats import Sample, read_llava_json, read_sharegpt
from edge_vlm.data.validate import validate
from edge_vlm.errors import EdgeVLMError
from edge_vlm.model.factory import small_tokenizer
from edge_vlm.prompting import render_chat, to_text


def _conv(*pairs):
    return [{"from": role, "value": value} for role, value in pairs]


def _q(text, answer="yes"):
    return _conv(("human", text), ("gpt", answer))


@pytest.fixture
def bad_file(tmp_path):
    """Two good samples, then every kind of problem (two samples for some kinds, to check the counts)."""
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    records = [
        {"id": "good-image", "image": "ok.png", "conversations": _q("<image>\nIs it red?")},
        {"id": "good-text", "conversations": _q("Is it red?")},
        {"id": "missing-1", "image": "nope.png", "conversations": _q("<image>\nQ?")},
        {"id": "missing-2", "image": "sub/nope.png", "conversations": _q("Q?\n<image>")},
        {"id": "no-tag", "image": "ok.png", "conversations": _q("Q?")},
        {"id": "doubled", "image": "ok.png", "conversations": _q("<image>\n<image>\nQ?")},
        {"id": "tag-in-text", "conversations": _q("<image>\nQ?")},
        {"id": "misplaced", "image": "ok.png", "conversations": _q("Q?", "a <image>")},
        {"id": "roles-1", "image": "ok.png", "conversations": _conv(("gpt", "a"), ("human", "<image>\nq"))},
        {"id": "roles-2", "conversations": _conv(("human", "q"), ("gpt", "a"), ("human", "q"))},
        {"id": "empty-q", "image": "ok.png", "conversations": _q("<image>\n")},
        {"id": "empty-a", "conversations": _q("Q?", "  ")},
        {"id": "bad", "conversations": "nothing"},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


EXPECTED = {
    "missing_image": ["missing-1", "missing-2"],
    "image_tag_missing": ["no-tag"],
    "image_tag_doubled": ["doubled"],
    "image_tag_in_text_sample": ["tag-in-text"],
    "image_tag_misplaced": ["misplaced"],
    "roles_not_alternating": ["roles-1", "roles-2"],
    "empty_turn": ["empty-q", "empty-a"],
    "bad_record": ["bad"],
}


def test_skip_reports_every_kind_with_ids_and_keeps_the_good(bad_file):
    lines = []
    kept, report = validate(read_llava_json(bad_file), stage="finetune", image_root=bad_file.parent,
                            on_error="skip", log=lines.append)
    assert [s.id for s in kept] == ["good-image", "good-text"]
    assert report.problems == EXPECTED
    assert report.counts()["missing_image"] == 2 and report.total == 13 and report.skipped == 11
    printed = "\n".join(lines)
    for kind, ids in EXPECTED.items():
        assert f"{kind}: {len(ids)} " in printed and ids[0] in printed


def test_stop_raises_with_kinds_and_ids(bad_file):
    lines = []
    with pytest.raises(EdgeVLMError) as info:
        validate(read_llava_json(bad_file), stage="finetune", image_root=bad_file.parent, on_error="stop",
                 log=lines.append)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints errors as one line
    assert "missing_image 2 [missing-1, missing-2]" in message and "empty_turn 2" in message
    assert lines, "the summary is printed before stopping"


def test_clean_data_passes_under_stop_and_is_still_reported(bad_file):
    samples = read_llava_json(bad_file)[:2]
    lines = []
    kept, report = validate(samples, stage="finetune", image_root=bad_file.parent, on_error="stop", log=lines.append)
    assert len(kept) == 2 and report.ok and "2 kept" in lines[0]


def test_stage_rules(bad_file):
    samples = read_llava_json(bad_file)[:2]
    _, report = validate(samples, stage="pretrain", image_root=bad_file.parent, log=lambda _: None)
    assert report.problems == {"image_required": ["good-text"]}
    _, report = validate(samples, stage="sft", image_root=bad_file.parent, log=lambda _: None)
    assert report.problems == {"image_in_text_stage": ["good-image"]}
    # the plain template drops the question: an empty one is fine for stage 1, an empty caption is not
    pretrain = [Sample("cap", "ok.png", [("", "a red circle")], image_tags=1),
                Sample("nocap", "ok.png", [("Describe.", " ")], image_tags=1)]
    kept, report = validate(pretrain, stage="pretrain", image_root=bad_file.parent, log=lambda _: None)
    assert [s.id for s in kept] == ["cap"] and report.problems == {"empty_turn": ["nocap"]}


def test_samples_built_in_code_are_checked_too():
    samples = [Sample("ok", None, [("q", "a")]), Sample("tagged", None, [("<image>\nq", "a")]),
               Sample("img-tagged", "/abs/x.png", [("<image>\nq", "a")])]
    _, report = validate(samples, stage="finetune", log=lambda _: None)
    assert report.problems["image_tag_in_text_sample"] == ["tagged"]
    assert report.problems["image_tag_doubled"] == ["img-tagged"]  # the template adds one more
    assert report.problems["missing_image"] == ["img-tagged"]


def test_too_long_at_the_exact_boundary(tmp_path):
    """The length check counts tokens after image expansion; the expected length comes from transformers' own
    tokenizer on the rendered text, not from our code."""
    tok = small_tokenizer()
    tok.save(tmp_path / "tok")
    reference = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    turns = [("How many circles are there?", "two"), ("Is there a red square?", "yes")]
    samples = [Sample("long", "ok.png", turns, image_tags=1), Sample("short", None, [("Hi?", "yes")], image_tags=0)]
    text = to_text(render_chat(turns, has_image=True))
    n_image = 16
    expected = len(reference(text, add_special_tokens=False)["input_ids"]) + n_image - 1
    kwargs = dict(stage="finetune", image_root=tmp_path, tokenizer=tok, num_image_tokens=n_image, log=lambda _: None)
    kept, report = validate(samples, context_length=expected, **kwargs)
    assert len(kept) == 2 and report.ok and report.max_length == expected
    kept, report = validate(samples, context_length=expected - 1, **kwargs)
    assert [s.id for s in kept] == ["short"] and report.problems == {"too_long": ["long"]}


def test_sharegpt_file_validates_for_sft(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "conversations": _q("What is 2 plus 2?", "4")},
        {"id": "b", "conversations": _conv(("user", "q"), ("user", "q"))},
    ]))
    kept, report = validate(read_sharegpt(path), stage="sft", log=lambda _: None)
    assert [s.id for s in kept] == ["a"] and report.problems == {"roles_not_alternating": ["b"]}


def test_bad_policy_and_stage():
    with pytest.raises(EdgeVLMError, match="on_error"):
        validate([], on_error="ignore")
    with pytest.raises(EdgeVLMError, match="stage"):
        validate([], stage="stage3")


def test_decoding_reports_every_unusable_picture_with_its_file_and_reason(tmp_path):
    import os

    from tests.data.pictures import photo, write_damaged

    damaged = write_damaged(tmp_path / "img")
    photo().save(tmp_path / "img" / "fine.png")
    Image.new("L", (40, 13_000), 90).save(tmp_path / "img" / "thin.png")  # its padded square is 169 MP
    (tmp_path / "img" / "folder.png").mkdir()
    extra = {"thin": "thin.png", "folder": "folder.png"}
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "img" / "pipe.png")
        extra["fifo"] = "pipe.png"
    names = {kind: path.name for kind, path in damaged.items()} | extra | {"fine": "fine.png", "fine-again": "fine.png"}
    samples = [Sample(kind, f"img/{name}", [("q", "a")], image_tags=1) for kind, name in names.items()]
    reasons = {"truncated_jpeg": "truncated", "truncated_png": "truncated", "empty": "empty (0 bytes)",
               "text": "not a picture", "bomb": "too large", "thin": "13000 x 13000", "folder": "directory",
               "fifo": "FIFO"}
    lines = []
    kept, report = validate(samples, stage="finetune", image_root=tmp_path, decode_images=True, log=lines.append)
    assert [s.id for s in kept] == ["fine", "fine-again"]
    bad = [kind for kind in names if kind in reasons]
    assert report.problems == {"bad_image": bad}
    printed = "\n".join(lines)
    for kind in bad:
        assert reasons[kind] in report.image_reasons[kind] and names[kind] in report.image_reasons[kind], kind
        assert f"    {kind}: {report.image_reasons[kind]}" in printed
    # the same picture in square mode (stage 1's default) is fine: the bound is on what preprocessing builds
    thin_and_fine = [s for s in samples if s.id in ("thin", "fine")]
    _, square = validate(thin_and_fine, stage="pretrain", image_root=tmp_path, decode_images=True, log=lines.append)
    assert square.ok and square.kept == 2
    # without decoding, one stat a picture: what a stat can see is still caught
    _, quick = validate(samples, stage="finetune", image_root=tmp_path, log=lines.append)
    assert set(quick.problems["bad_image"]) == {"empty", "folder"} | ({"fifo"} & set(names))
