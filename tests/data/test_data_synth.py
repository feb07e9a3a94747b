"""The synthetic world: determinism, balance, answers checked against the pixels, the real loaders read it,
held-out pictures, the moving scene."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from edge_vlm.data.formats import read_llava_json, read_sharegpt
from edge_vlm.data.questions import MULTIPLE_CHOICE_SUFFIX, QUESTION_TYPES, SHORT_ANSWER_SUFFIX
from edge_vlm.data.scene import COLORS, SLOTS, MovingScene, moving_scene_frame
from edge_vlm.data.synth import write_world
from edge_vlm.data.validate import validate
from edge_vlm.errors import EdgeVLMError


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _answers_by_type(records, types_key):
    out: dict[str, Counter] = {}
    for record in records:
        types = record[types_key] if isinstance(record[types_key], list) else [record[types_key]]
        for message, question_type in zip(record["conversations"][1::2], types):
            out.setdefault(question_type, Counter())[message["value"]] += 1
    return out


def test_same_seed_same_bytes_other_seed_other_world(world, tmp_path):
    again = tmp_path / "again"
    write_world(again, seed=7, train=60, eval_size=140, sft=12, text_only=8, image_size=112, progress=False)
    first, second = _files(world), _files(again)
    assert first.keys() == second.keys()
    for name in first:
        if name != "world.json":
            assert first[name] == second[name], name
    manifest_a, manifest_b = (json.loads(d["world.json"]) for d in (first, second))
    assert {k: v for k, v in manifest_a.items() if k != "command"} == {
        k: v for k, v in manifest_b.items() if k != "command"}
    other = tmp_path / "other"
    write_world(other, seed=8, train=6, eval_size=7, sft=2, text_only=1, progress=False)
    assert (other / "images/train-000001.png").read_bytes() != first["images/train-000001.png"]
    # each picture comes from its own (seed, split, index) stream: a smaller world is a prefix of a larger one
    prefix = tmp_path / "prefix"
    write_world(prefix, seed=7, train=6, eval_size=7, sft=2, text_only=1, progress=False)
    for index in range(1, 7):
        name = f"images/train-{index:06d}.png"
        assert (prefix / name).read_bytes() == first[name]


def test_every_type_in_finetune_and_eval_and_exist_balanced(world):
    finetune = json.loads((world / "finetune.json").read_text())
    evaluation = json.loads((world / "eval.json").read_text())
    tuned = _answers_by_type([r for r in finetune if "image" in r], "question_types")
    held_out = _answers_by_type(evaluation, "question_type")
    assert set(tuned) == set(held_out) == set(QUESTION_TYPES)
    assert abs(tuned["exist"]["yes"] - tuned["exist"]["no"]) <= 1 and set(tuned["exist"]) == {"yes", "no"}
    assert held_out["exist"] == Counter({"yes": 10, "no": 10})
    assert sum(held_out[t].total() for t in QUESTION_TYPES) == 140
    assert all(held_out[t].total() == 20 for t in QUESTION_TYPES)
    assert held_out["count"] == Counter({"0": 5, "1": 5, "2": 5, "3": 5})
    # the record's own "answer" key is the gpt turn
    assert all(r["answer"] == r["conversations"][1]["value"] for r in evaluation)


def test_suffixes_and_answer_vocabulary(world):
    evaluation = json.loads((world / "eval.json").read_text())
    for record in evaluation:
        question, answer = record["conversations"][0]["value"], record["answer"]
        assert question.startswith("<image>\n")
        if record["question_type"] == "mc":
            assert question.endswith(MULTIPLE_CHOICE_SUFFIX)
            letters = re.findall(r"\n([A-D])\. ", question)
            assert letters == ["A", "B", "C", "D"][: len(letters)] and len(letters) >= 2 and answer in letters
        else:
            assert question.endswith(SHORT_ANSWER_SUFFIX)
            assert 1 <= len(answer.split()) <= 2


def _mask(pixels: np.ndarray, rgb) -> np.ndarray:
    return np.all(pixels == np.asarray(rgb, dtype=np.uint8), axis=-1)


def _slot_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    side = mask.shape[0]
    cx, cy = xs.mean() / side, ys.mean() / side
    return min(SLOTS, key=lambda s: (SLOTS[s][0] - cx) ** 2 + (SLOTS[s][1] - cy) ** 2)


def test_answers_agree_with_the_pixels(world):
    """Independent of the generator's bookkeeping: colours are exact RGB in the PNG (no anti-aliasing), so the
    colour and position answers can be read back from the picture itself."""
    checked = Counter()
    for record in json.loads((world / "eval.json").read_text()):
        pixels = np.asarray(Image.open(world / record["image"]).convert("RGB"))
        question, answer, kind = record["conversations"][0]["value"], record["answer"], record["question_type"]
        present = {c for c, rgb in COLORS.items() if _mask(pixels, rgb).sum() > 20}
        assert 1 <= len(present) <= 4
        if kind == "position":
            color = re.search(r"Where is the (\w+) ", question).group(1)
            assert _slot_of(_mask(pixels, COLORS[color])) == answer
        elif kind == "color":
            assert answer in present
        elif kind == "shape":
            assert re.search(r"What shape is the (\w+) object", question).group(1) in present
        elif kind == "exist":
            color = re.search(r"Is there a (\w+) ", question).group(1)
            if answer == "yes":
                assert color in present
        elif kind == "text":
            dark = (pixels.max(axis=-1) < 60).sum()
            assert dark > 30, "a glyph is drawn"
            assert ("number" in question) == answer.isdigit()
        checked[kind] += 1
    assert checked["position"] == 20 and checked["color"] == 20


def test_eval_pictures_are_not_training_pictures(world):
    def digest(path):
        return hashlib.sha1(np.asarray(Image.open(path).convert("RGB")).tobytes()).digest()

    train = {digest(p) for p in (world / "images").glob("train-*.png")}
    held_out = [digest(p) for p in (world / "images").glob("eval-*.png")]
    assert len(train) == 60 and len(held_out) == 140
    assert not train.intersection(held_out)


def test_the_real_loaders_read_the_world_cleanly(world, world_tokenizer):
    quiet = {"log": lambda _: None, "on_error": "stop", "image_root": world, "tokenizer": world_tokenizer,
             "num_image_tokens": 16, "context_length": 512}
    manifest = json.loads((world / "world.json").read_text())
    for name, reader, stage in [("pretrain.json", read_llava_json, "pretrain"),
                                ("finetune.json", read_llava_json, "finetune"),
                                ("eval.json", read_llava_json, "finetune"),
                                ("sft.json", read_sharegpt, "sft")]:
        samples = reader(world / name)
        kept, report = validate(samples, stage=stage, **quiet)
        assert report.ok and len(kept) == manifest["counts"][name.removesuffix(".json")]
    finetune = read_llava_json(world / "finetune.json")
    assert sum(s.image is None for s in finetune) == manifest["counts"]["finetune_text_only"] == 8
    assert all("<image>" not in q for s in finetune for q, _ in s.turns)
    evaluation = read_llava_json(world / "eval.json")
    assert {"question_type", "answer"} <= set(evaluation[0].extra)


def test_bad_output_paths(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(EdgeVLMError, match="is a file"):
        write_world(a_file, train=2, eval_size=1, progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(EdgeVLMError, match="not empty"):
        write_world(tmp_path / "full", train=2, eval_size=1, progress=False)
    assert (tmp_path / "full" / "keep.txt").exists()
    # --force never deletes a folder that is not a world: the user's file stays
    with pytest.raises(EdgeVLMError, match="replaces only an earlier synthetic world"):
        write_world(tmp_path / "full", train=2, eval_size=1, progress=False, force=True)
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    # an earlier world is replaced with --force, but not while it holds a file the user saved there; an empty folder
    # is filled without it
    write_world(tmp_path / "world", train=2, eval_size=1, progress=False, seed=1)
    (tmp_path / "world" / "stale.txt").write_text("the user's")
    with pytest.raises(EdgeVLMError, match="also holds .*stale.txt, which edge-vlm did not write"):
        write_world(tmp_path / "world", train=2, eval_size=1, progress=False, force=True, seed=2)
    (tmp_path / "world" / "stale.txt").unlink()
    write_world(tmp_path / "world", train=2, eval_size=1, progress=False, force=True, seed=2)
    assert json.loads((tmp_path / "world" / "world.json").read_text())["seed"] == 2
    (tmp_path / "empty").mkdir()
    write_world(tmp_path / "empty", train=2, eval_size=1, progress=False)
    assert (tmp_path / "empty" / "world.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt", "full", "world"], \
        "no temp dirs left behind"


def test_moving_scene_is_smooth_deterministic_and_sized():
    early, later = np.asarray(moving_scene_frame(10.0, 128), dtype=float), np.asarray(moving_scene_frame(10.02, 128))
    assert np.array_equal(np.asarray(moving_scene_frame(10.0, 128)), early)
    step = np.abs(early - later).mean()
    jump = np.abs(early - np.asarray(moving_scene_frame(13.0, 128))).mean()
    assert step < jump and jump > 1.0
    frame = moving_scene_frame(1.5, (160, 120))
    assert frame.size == (160, 120) and frame.mode == "RGB"
    scene = MovingScene(seed=3)
    for t in np.linspace(0, 60, 61):
        for obj in scene.objects_at(float(t)):
            assert obj["size"] / 2 <= obj["x"] <= 1 - obj["size"] / 2
            assert obj["size"] / 2 <= obj["y"] <= 1 - obj["size"] / 2


def test_an_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import edge_vlm.data.synth as synth

    calls = {"n": 0}
    real_draw = synth.draw_scene

    def draw_then_interrupt(scene, size):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_draw(scene, size)

    monkeypatch.setattr(synth, "draw_scene", draw_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_world(tmp_path / "w", train=20, eval_size=7, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_caption_counts_agree_with_its_own_list_and_the_count_answers(tmp_path, world):
    """With caption_counts the caption's closing sentence counts every shape; re-counted here from the caption's own
    list of items and checked against the stage-2 "How many" answers about the same picture. Without it the
    captions are those of the fixture's world."""
    from edge_vlm.data.scene import SHAPES, plural

    counting = tmp_path / "counting"
    write_world(counting, seed=7, train=60, eval_size=7, sft=2, text_only=2, caption_counts=True, progress=False)
    plain = json.loads((world / "pretrain.json").read_text())
    counted: dict[str, dict[str, int]] = {}
    for record, without in zip(json.loads((counting / "pretrain.json").read_text()), plain):
        text = record["conversations"][1]["value"]
        items, _, tally = text.rpartition(". ")
        assert without["conversations"][1]["value"] == items + "."
        said = {name.lower(): int(n) for name, n in re.findall(r"(\w+): (\d)", tally)}
        assert list(said) == [plural(s) for s in SHAPES]
        listed = Counter(re.findall(rf"\b({'|'.join(SHAPES)})\b", items))
        assert said == {plural(s): listed[s] for s in SHAPES}, text
        counted[record["image"]] = said
    checked = 0
    for record in json.loads((counting / "finetune.json").read_text()):
        for (question, answer), kind in zip(zip(record["conversations"][0::2], record["conversations"][1::2]),
                                            record["question_types"]):
            if kind == "count":
                shapes = re.search(r"How many (\w+) are there", question["value"]).group(1)
                assert counted[record["image"]][shapes] == int(answer["value"])
                checked += 1
    assert checked > 20


def test_extra_questions_lengthen_conversations_without_repeats(tmp_path, world):
    longer = tmp_path / "longer"
    write_world(longer, seed=7, train=60, eval_size=7, sft=2, text_only=2, extra_questions=4, progress=False)

    def questions(root):
        records = [r for r in json.loads((root / "finetune.json").read_text()) if "image" in r]
        return [[m["value"].replace("<image>", "").strip() for m in r["conversations"][0::2]] for r in records]

    base, extended = questions(world), questions(longer)
    assert np.mean([len(q) for q in extended]) > np.mean([len(q) for q in base]) + 3
    assert all(len(set(q)) == len(q) for q in extended), "a question asked twice in one conversation"
    assert json.loads((longer / "world.json").read_text())["extra_questions"] == 4
    with pytest.raises(EdgeVLMError, match="extra_questions"):
        write_world(tmp_path / "bad", train=2, eval_size=1, extra_questions=-1, progress=False)
