"""GQA (testdev-balanced): short answers, exact match after convert_gqa_for_eval.py's conversion.

Layout (LLaVA docs/Evaluation.md): llava_gqa_testdev_balanced.jsonl, data/images/, and GQA's own
data/testdev_balanced_questions.json (the ground truth: qid -> {"answer", "types", "isBalanced", ...}).
"""

from __future__ import annotations

from edge_vlm.eval.benchmarks.base import (
    SHORT_ANSWER,
    Benchmark,
    Dataset,
    answer_text,
    read_json,
    write_json_atomic,
)
from edge_vlm.eval.benchmarks.loader import read_question_jsonl
from edge_vlm.eval.scorers import gqa_is_correct, gqa_prediction

TRUTH_FILES = ("data/testdev_balanced_questions.json", "testdev_balanced_questions.json", "data/*_questions.json")


class GQA(Benchmark):
    name = "gqa"
    title = "GQA"
    llava_folder = "gqa"
    question_files = ("llava_gqa_testdev_balanced.jsonl", "llava_gqa_*.jsonl")
    image_folders = ("data/images", "images", ".")
    headline = "accuracy"
    offline = "accuracy (and binary / open) over balanced questions with data/testdev_balanced_questions.json"

    def read(self, root, question_file, image_folder):
        items = read_question_jsonl(self, root, question_file, image_folder, (SHORT_ANSWER,))
        return Dataset(self.name, root, question_file, items)

    def submit(self, dataset, answers, out_dir, label):
        """testdev_balanced_predictions.json: [{"questionId", "prediction"}], the input of GQA's eval/eval.py."""
        rows = [{"questionId": item.question_id, "prediction": gqa_prediction(answers[item.key]["text"])}
                for item in dataset.items if item.key in answers]
        return [write_json_atomic(out_dir / "testdev_balanced_predictions.json", rows)]

    def truth(self, dataset) -> dict:
        for pattern in TRUTH_FILES:
            found = sorted(dataset.root.glob(pattern))
            if found:
                return read_json(found[0])
        return {}

    def score(self, dataset, items, answers):
        questions = self.truth(dataset)
        scores = {"accuracy": [], "binary": [], "open": []}
        for item in items:
            record = item.meta["record"]
            question = questions.get(str(item.question_id))
            if question is None and "answer" in record:
                question = {"answer": record["answer"]}
            if question is None or not question.get("isBalanced", True):
                continue
            text = answer_text(answers, item)
            correct = float(text is not None and gqa_is_correct(text, question["answer"]))
            scores["accuracy"].append(correct)
            structural = question.get("types", {}).get("structural")
            if structural is not None:
                scores["open" if structural == "query" else "binary"].append(correct)
        if not scores["accuracy"]:
            return None
        result = {k: 100 * sum(v) / len(v) for k, v in scores.items() if v}
        result["count"] = len(scores["accuracy"])
        return result
