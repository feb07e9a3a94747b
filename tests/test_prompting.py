"""Templates, byte-exact with docs/prompts.md (strings written out by hand from the reference, not by our code)."""

from __future__ import annotations

import pytest

from edge_vlm.errors import EdgeVLMError
from edge_vlm.prompting import inference_prompt, render_chat, render_plain, to_text

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)


def test_two_turn_string_is_exact():
    text = to_text(render_chat([("What is it?", "A cat."), ("What colour?", "Black.")]))
    assert text == (
        SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A cat.<|endoftext|>USER: What colour? ASSISTANT: Black.<|endoftext|>"
    )


def test_inference_prompt_ends_in_assistant_colon():
    prompt = inference_prompt("What is it?")
    assert prompt == SYSTEM + " USER: <image>\nWhat is it? ASSISTANT:"
    follow_up = inference_prompt("And then?", history=[("What is it?", "A cat.")])
    assert follow_up == SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A cat.<|endoftext|>USER: And then? ASSISTANT:"


def test_text_only_has_no_image():
    assert inference_prompt("Hi?", has_image=False) == SYSTEM + " USER: Hi? ASSISTANT:"


def test_plain_template():
    assert to_text(render_plain("a red square")) == "<image>a red square\n"
    supervised = [s.text for s in render_plain("a red square") if s.supervised]
    assert supervised == ["a red square\n"]


def test_supervised_segments_are_answers_with_eos():
    segments = render_chat([("Q1", "A1"), ("Q2", "A2")])
    assert [s.text for s in segments if s.supervised] == [" A1<|endoftext|>", " A2<|endoftext|>"]


@pytest.mark.parametrize("turns", [[], [("", "x")], [("  ", None)], [("q", None), ("q2", "a")], [("<image>q", None)]])
def test_bad_conversations_are_refused(turns):
    with pytest.raises(EdgeVLMError):
        render_chat(turns)
