"""Readers: LLaVA JSON / JSONL and ShareGPT, `<image>` stripping, role spellings, structural problems, bad files."""

from __future__ import annotations

import json

import pytest

from edge_vlm.data.formats import (
    BAD_RECORD,
    IMAGE_TAG_MISPLACED,
    ROLES_NOT_ALTERNATING,
    read_llava_json,
    read_sharegpt,
)
from edge_vlm.errors import EdgeVLMError


def _conv(*pairs):
    out = []
    for role, value in pairs:
        out.append({"from": role, "value": value})
    return out


LLAVA_RECORDS = [
    {"id": "front", "image": "a/1.jpg", "conversations": _conv(("human", "<image>\nWhat is it?"), ("gpt", "A cat."),
                                                              ("human", "Color?"), ("gpt", "Black."))},
    # LLaVA-665K also puts the placeholder after the question
    {"id": 42, "image": "a/2.jpg", "model": "x", "conversations": _conv(("human", "Describe.\n<image>"), ("gpt", "Dog."))},
    {"id": "text", "conversations": _conv(("human", "Hi"), ("gpt", "Hello"))},
]


def test_llava_json_and_jsonl_read_the_same(tmp_path):
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps(LLAVA_RECORDS))
    as_jsonl = tmp_path / "d.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(r) for r in LLAVA_RECORDS) + "\n\n")
    for samples in (read_llava_json(as_json), read_llava_json(as_jsonl)):
        front, back, text = samples
        assert front.id == "front" and front.image == "a/1.jpg"
        assert front.turns == [("What is it?", "A cat."), ("Color?", "Black.")]
        assert back.id == "42" and back.turns == [("Describe.", "Dog.")] and back.extra == {"model": "x"}
        assert text.image is None and text.turns == [("Hi", "Hello")]
        assert [s.image_tags for s in samples] == [1, 1, 0]
        assert all(not s.issues for s in samples)


def test_sharegpt_role_spellings_and_leading_system_turn(tmp_path):
    records = [
        {"id": "a", "conversations": [{"from": "system", "value": "be nice"}, {"from": "user", "value": "q1"},
                                      {"from": "assistant", "value": "a1"}, {"from": "human", "value": "q2"},
                                      {"from": "gpt", "value": "a2"}]},
        {"id": "b", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(records))
    a, b = read_sharegpt(path)
    assert a.turns == [("q1", "a1"), ("q2", "a2")] and not a.issues and a.image is None
    assert b.turns == [("q", "a")] and not b.issues


def test_structural_problems_are_recorded_not_raised(tmp_path):
    records = [
        {"id": "gpt-first", "conversations": _conv(("gpt", "hi"), ("human", "q"))},
        {"id": "no-answer", "conversations": _conv(("human", "q"), ("gpt", "a"), ("human", "q2"))},
        {"id": "two-users", "conversations": _conv(("human", "q"), ("human", "q"), ("gpt", "a"))},
        {"id": "odd-role", "conversations": _conv(("human", "q"), ("robot", "a"))},
        {"id": "no-conv"},
        {"id": "late-tag", "image": "x.png", "conversations": _conv(("human", "q"), ("gpt", "a"),
                                                                     ("human", "<image>\nq2"), ("gpt", "a2"))},
        {"id": "multi-image", "image": ["x.png", "y.png"], "conversations": _conv(("human", "<image>q"), ("gpt", "a"))},
        "not a record",
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    issues = {s.id: s.issues for s in read_llava_json(path)}
    assert issues == {
        "gpt-first": [ROLES_NOT_ALTERNATING],
        "no-answer": [ROLES_NOT_ALTERNATING],
        "two-users": [ROLES_NOT_ALTERNATING],
        "odd-role": [BAD_RECORD],
        "no-conv": [BAD_RECORD],
        "late-tag": [IMAGE_TAG_MISPLACED],
        "multi-image": [BAD_RECORD],
        "bad.json#7": [BAD_RECORD],
    }


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ('{"id": 1}', "expected a JSON list"),
])
def test_bad_files_raise_a_clear_error(tmp_path, content, message):
    path = tmp_path / "d.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(EdgeVLMError, match=message):
        read_llava_json(path)


def test_bad_jsonl_line_and_directory(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1, "conversations": []}\n{oops\n')
    with pytest.raises(EdgeVLMError, match=r"d\.jsonl:2:2: Expecting property name"):  # line 2, column 2
        read_llava_json(path)
    with pytest.raises(EdgeVLMError, match="is not a regular file but a directory"):
        read_sharegpt(tmp_path)


def test_records_one_a_line_in_a_json_file_get_the_hint(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"id": 1, "conversations": []}\n{"id": 2, "conversations": []}\n')
    with pytest.raises(EdgeVLMError, match=r"d\.json:2:1: Extra data .* must be named \.jsonl"):
        read_llava_json(path)
