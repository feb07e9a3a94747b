"""Scorers against cases computed by hand from the official rules (eval_pope.py, eval_science_qa.py,
m4c_evaluator.py, MME's calculation.py, GQA's eval.py via convert_gqa_for_eval.py)."""

from __future__ import annotations

import pytest

from edge_vlm.eval.scorers import (
    exact_match,
    gqa_is_correct,
    mme_task_score,
    mme_totals,
    mme_yes_no,
    pope_metrics,
    pope_yes_no,
    sqa_is_correct,
    sqa_letter,
    vqa_accuracy,
)


# ------------------------------------------------------------------------------------------- VQA accuracy
@pytest.mark.parametrize(
    ("prediction", "gts", "expected"),
    [
        # 2 of 10 say yes: leaving out a 'yes' leaves 1 match (1/3), leaving out a 'no' leaves 2 (2/3)
        ("yes", ["yes"] * 2 + ["no"] * 8, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6, not min(1, 2/3)
        # 3 of 10: 3 subsets with 2 matches (2/3), 7 with 3 (1)
        ("yes", ["yes"] * 3 + ["no"] * 7, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        # 4 of 10 after normalisation ('two' -> '2'): every subset keeps >= 3 matches
        ("two", ["2"] * 4 + ["3"] * 6, 1.0),
        # 1 of 10: the subset without it has 0 matches, the 9 others 1 (1/3)
        ("Two.", ["2"] + ["3"] * 9, 9 * (1 / 3) / 10),
        ("dog", ["The dog"] * 10, 1.0),  # ground truth is normalised too
        ("cat", ["dog"] * 10, 0.0),
    ],
)
def test_vqa_accuracy_leave_one_out(prediction, gts, expected):
    assert vqa_accuracy(prediction, gts) == pytest.approx(expected)


def test_vqa_accuracy_needs_answers():
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


# --------------------------------------------------------------------------------------------------- POPE
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No.", "no"),
        ("Yes, there is a dog in the image.", "yes"),
        ("No, there isn't.", "no"),  # 'No,' loses its comma -> 'No'
        ("There is not a cat.", "no"),
        ("yes. But no.", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # only 'No', 'no', 'not' are recognised
        ("Nope", "yes"),
        ("", "yes"),
    ],
)
def test_pope_yes_no(text, expected):
    assert pope_yes_no(text) == expected


def test_pope_metrics_by_hand():
    labels = ["yes", "yes", "no", "no", "no"]
    answers = ["Yes", "No", "Yes, it is.", "no", "There is no dog."]
    # predictions yes, no, yes, no, no -> TP 1, FN 1, FP 1, TN 2
    m = pope_metrics(answers, labels)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 2)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(1 / 2)
    assert m["yes_ratio"] == pytest.approx(2 / 5)


def test_pope_metrics_without_positive_predictions_does_not_crash():
    m = pope_metrics(["No", "No"], ["yes", "no"])
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 0.5


# ---------------------------------------------------------------------------------------------- ScienceQA
@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"),
        ("B. Because plants need light.", "B"),
        ("The answer is C.", "C"),
        ("I think the answer is D, since ...", None),  # regex needs 'The answer is'
        ("The answer is B!", "B"),  # the final '.' of the regex matches any character
        ("The answer is B", None),  # ...but one must be there
        ("The answer is C. The answer is D.", None),  # two matches fail
        ("A.", None),  # not a bare letter, and 'A.' is not followed by a space
        ("(A)", None),
        ("a", None),
    ],
)
def test_sqa_letter(text, letter):
    assert sqa_letter(text) == letter


def test_sqa_correct_only_within_the_problem_choices():
    assert sqa_is_correct("B", answer_index=1, num_choices=2)
    assert not sqa_is_correct("A", answer_index=1, num_choices=2)
    assert not sqa_is_correct("E", answer_index=4, num_choices=3)  # E is not a choice of a 3-choice problem
    assert not sqa_is_correct("The answer is Z.", answer_index=0, num_choices=5)


# ---------------------------------------------------------------------------------------------------- MME
@pytest.mark.parametrize(
    ("text", "parsed"),
    [("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), ("No.", "no"), ("Not sure", "no"),
     ("none", "no"), ("I think yes", "other"), ("", "other")],
)
def test_mme_yes_no(text, parsed):
    assert mme_yes_no(text) == parsed


def test_mme_accuracy_plus_by_hand():
    rows = [
        ("Yes", "Yes"), ("No", "No"),  # image 1: both right
        ("Yes", "No"), ("No", "no"),  # image 2: one right
        ("Yes", "I think so"), ("No", "none"),  # image 3: 'other' (wrong), 'none' -> no (right)
    ]
    s = mme_task_score(rows)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["accuracy_plus"] == pytest.approx(1 / 3)
    assert s["score"] == pytest.approx(100 * (4 / 6 + 1 / 3))


def test_mme_incomplete_pair_counts_only_in_the_accuracy_plus_denominator():
    rows = [("Yes", "Yes"), ("No", "No"), ("Yes", "Yes"), ("No", "No"), ("Yes", "Yes")]
    s = mme_task_score(rows)
    assert s["accuracy"] == 1.0  # the lone fifth row is skipped, as calculation.py does
    assert s["accuracy_plus"] == pytest.approx(2 / 3)


def test_mme_totals_split_perception_and_cognition():
    tasks = {"existence": {"score": 190.0}, "count": {"score": 150.0}, "code_reasoning": {"score": 50.0}}
    totals = mme_totals(tasks)
    assert totals["perception"] == 340.0 and totals["cognition"] == 50.0
    assert totals["perception_tasks"] == 2 and totals["cognition_tasks"] == 1


# ---------------------------------------------------------------------------------------------- GQA / synth
@pytest.mark.parametrize(
    ("text", "gold", "correct"),
    [("Yes.", "yes", True), ("Left", "left", True), ("Yes. It is", "yes", False), ("the table", "table", False)],
)
def test_gqa(text, gold, correct):
    assert gqa_is_correct(text, gold) is correct


@pytest.mark.parametrize(
    ("text", "answer", "correct"),
    [(" Red. ", "red", True), ("RED", "Red", True), ("red square", "red", False), ("2", "two", False)],
)
def test_exact_match(text, answer, correct):
    assert exact_match(text, answer) is correct
