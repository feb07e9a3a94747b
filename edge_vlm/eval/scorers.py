"""The official scoring rules of the paper's benchmarks, as pure functions (docs/evaluation.md).

Each function names the upstream script whose rule it follows. Inputs are model answers as strings and the
benchmark's ground truth; outputs are plain numbers (fractions in [0, 1]; callers turn them into percentages).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_vlm.eval.normalize import normalize_answer

SQA_OPTIONS = ("A", "B", "C", "D", "E")
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


# ----------------------------------------------------------------------------------------------- VQA-style
def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction (m4c_evaluator.TextVQAAccuracyEvaluator; VQAv2, VizWiz, TextVQA).

    Prediction and the (usually 10) human answers are normalised (normalize_answer); the score is
    min(1, matches / 3) averaged over the leave-one-out subsets of the human answers.
    """
    if not gt_answers:
        raise ValueError("a VQA question needs at least one ground-truth answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(answer) for answer in gt_answers]
    matches = sum(gt == pred for gt in gts)
    if matches == 0:
        return 0.0
    # leaving out a matching answer leaves matches-1 others, leaving out another leaves all matches
    total = sum(min(1.0, (matches - (gt == pred)) / 3.0) for gt in gts)
    return total / len(gts)


# ---------------------------------------------------------------------------------------------------- POPE
def pope_yes_no(text: str) -> str:
    """POPE's answer parsing (LLaVA eval_pope.py): keep the text before the first '.', drop commas, split on
    spaces; 'no' if any word is exactly `No`, `not` or `no`, else 'yes' (so an unclear answer counts as yes)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


@dataclass
class BinaryCounts:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn


def pope_metrics(predictions: Iterable[str], labels: Iterable[str]) -> dict:
    """Accuracy, precision, recall, F1 and yes-ratio of raw answers against 'yes'/'no' labels (eval_pope.py).

    Labels other than 'no' count as positive, as upstream. Where upstream would divide by zero (no positive
    prediction or label) the value is 0.0 instead of a crash.
    """
    counts = BinaryCounts()
    yes = 0
    for text, label in zip(predictions, labels, strict=True):
        pred_yes = pope_yes_no(text) == "yes"
        label_yes = label != "no"
        yes += pred_yes
        if pred_yes and label_yes:
            counts.tp += 1
        elif pred_yes:
            counts.fp += 1
        elif not label_yes:
            counts.tn += 1
        else:
            counts.fn += 1
    if counts.total == 0:
        raise ValueError("no POPE answers to score")
    precision = counts.tp / (counts.tp + counts.fp) if counts.tp + counts.fp else 0.0
    recall = counts.tp / (counts.tp + counts.fn) if counts.tp + counts.fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (counts.tp + counts.tn) / counts.total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": yes / counts.total,
        "tp": counts.tp, "fp": counts.fp, "tn": counts.tn, "fn": counts.fn,
        "count": counts.total,
    }


# ----------------------------------------------------------------------------------------------- ScienceQA
def sqa_letter(text: str, options: Sequence[str] = SQA_OPTIONS) -> str | None:
    """The option letter in a ScienceQA answer (LLaVA eval_science_qa.py), or None ('FAILED').

    A bare letter; else the first character when followed by '. '; else the letter of the ONE match of
    `The answer is ([A-Z]).` (the final '.' matches any character; two or more matches fail).
    """
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = _SQA_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


def sqa_is_correct(text: str, answer_index: int, num_choices: int, options: Sequence[str] = SQA_OPTIONS) -> bool:
    """True when the extracted letter is one of the problem's choices and the right one."""
    letter = sqa_letter(text, options)
    valid = options[:num_choices]
    return letter is not None and letter in valid and valid.index(letter) == answer_index


# ----------------------------------------------------------------------------------------------------- MME
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_yes_no(text: str) -> str:
    """MME's parsing (eval_tool/calculation.py): lowercase; exactly 'yes'/'no'; else look for 'yes' then 'no'
    in the first 4 characters; else 'other' (always wrong)."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_task_score(rows: Sequence[tuple[str, str]]) -> dict:
    """One MME subtask from its (ground truth, raw answer) rows in file order, two consecutive rows per image
    (calculation.py): accuracy over questions of complete pairs, accuracy+ = images with both right / all
    pairs (an incomplete pair counts in the denominator only, as upstream), score = 100 * (acc + acc+)."""
    pairs = [rows[i : i + 2] for i in range(0, len(rows), 2)]
    answered = right = both_right = 0
    for pair in pairs:
        if len(pair) != 2:
            continue
        correct = 0
        for gt, text in pair:
            gt = gt.lower()
            if gt not in ("yes", "no"):
                raise ValueError(f"MME ground truth must be yes or no, got {gt!r}")
            answered += 1
            correct += mme_yes_no(text) == gt
        right += correct
        both_right += correct == 2
    accuracy = right / answered if answered else 0.0
    accuracy_plus = both_right / len(pairs) if pairs else 0.0
    return {"accuracy": accuracy, "accuracy_plus": accuracy_plus, "score": 100 * (accuracy + accuracy_plus),
            "images": len(pairs), "questions": answered}


def mme_totals(task_scores: dict[str, dict]) -> dict:
    """Perception and cognition sums over the subtasks present (the paper reports perception)."""
    return {
        "perception": sum(task_scores[t]["score"] for t in MME_PERCEPTION if t in task_scores),
        "cognition": sum(task_scores[t]["score"] for t in MME_COGNITION if t in task_scores),
        "perception_tasks": sum(t in task_scores for t in MME_PERCEPTION),
        "cognition_tasks": sum(t in task_scores for t in MME_COGNITION),
    }


# ----------------------------------------------------------------------------------------------------- GQA
def gqa_prediction(text: str) -> str:
    """The prediction GQA's eval.py compares (LLaVA convert_gqa_for_eval.py): trailing '.'s dropped, lowercased."""
    return text.rstrip(".").lower()


def gqa_is_correct(text: str, gold: str) -> bool:
    """GQA accuracy is exact string equality of the converted prediction with the gold answer."""
    return gqa_prediction(text) == gold


# --------------------------------------------------------------------------------------------- exact match
def exact_match_text(text: str) -> str:
    """Synthetic-world matching: case-insensitive, stripped, trailing '.' removed."""
    text = text.strip().lower()
    while text.endswith("."):
        text = text[:-1].rstrip()
    return text


def exact_match(prediction: str, answer: str) -> bool:
    return exact_match_text(prediction) == exact_match_text(answer)
