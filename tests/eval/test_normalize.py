"""EvalAI answer normalisation; each expected value traced by hand through m4c_evaluator.EvalAIAnswerProcessor."""

from __future__ import annotations

import pytest

from edge_vlm.eval.normalize import normalize_answer


@pytest.mark.parametrize(
    ("raw", "expected", "why"),
    [
        ("The poster shows a 10% discount.", "poster shows 10% discount", "articles dropped, final period removed"),
        ("Two dogs.", "2 dogs", "number words become digits"),
        ("Yes, it is!", "yes it is", "comma removed by the tokeniser, '!' glued to a word becomes a space"),
        ("hot-dog", "hot dog", "'-' with no space next to it becomes a space"),
        ("hot - dog", "hot dog", "'-' next to a space is deleted, the double space collapses"),
        ("3.5", "3.5", "a period before a digit stays"),
        ("dont", "don't", "contractions get their apostrophe"),
        ("Im", "im", "upper-case keys of the contraction table never match (text is lowercased first)"),
        ("man's hat", "man 's hat", "'s is split off"),
        ("What?", "what", "'?' removed by the tokeniser"),
        ("an apple\nand\ta pear", "apple and pear", "newlines and tabs are spaces"),
        ("none", "0", "'none' counts as zero"),
        ("1,000 (approx)", "1000 approx", "' (' deleted (space before it), ')' becomes a space"),
    ],
)
def test_normalize_answer(raw, expected, why):
    assert normalize_answer(raw) == expected, why


def test_at_most_32_periods_are_removed_as_upstream():
    # upstream passes re.UNICODE (32) where `count` goes: only the first 32 periods are stripped
    assert normalize_answer("." * 40) == "." * 8
