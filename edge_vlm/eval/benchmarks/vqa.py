"""VQAv2, VizWiz and TextVQA: short answers scored with VQA accuracy (EvalAI normalisation, leave-one-out).

VQAv2 test-dev and VizWiz test have no public answers: their submission files go to the EvalAI servers. They are
scored offline when the question records carry "answers" or an annotation file is present (VQAv2 val
`v2_mscoco_val2014_annotations.json`, VizWiz `val.json`). TextVQA val is scored with `TextVQA_0.5.1_val.json`.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval.benchmarks.base import (
    SHORT_ANSWER,
    VIZWIZ_UNANSWERABLE,
    Benchmark,
    Dataset,
    EvalItem,
    ImageRef,
    answer_text,
    read_json,
    read_jsonl,
    text_answers,
    with_suffix,
    write_json_atomic,
)
from edge_vlm.eval.benchmarks.loader import read_question_jsonl
from edge_vlm.eval.normalize import normalize_answer
from edge_vlm.eval.scorers import vqa_accuracy


def score_vqa(items: list[EvalItem], answers: dict, truth: dict[str, dict]) -> dict | None:
    """VQA accuracy over the items that have ground truth (`truth[item.key]` = {"answers", "answer_type"?});
    a question without an answer from the model scores 0. None when no item has ground truth."""
    scored = [item for item in items if item.key in truth]
    if not scored:
        return None
    per_type: dict[str, list[float]] = defaultdict(list)
    total = []
    for item in scored:
        text = answer_text(answers, item)
        value = 0.0 if text is None else vqa_accuracy(text, truth[item.key]["answers"])
        total.append(value)
        if truth[item.key].get("answer_type"):
            per_type[truth[item.key]["answer_type"]].append(value)
    result = {"accuracy": 100 * sum(total) / len(total), "count": len(total)}
    if per_type:
        result["accuracy_by_answer_type"] = {k: 100 * sum(v) / len(v) for k, v in sorted(per_type.items())}
    return result


def _record_truth(items: list[EvalItem]) -> dict[str, dict]:
    """Ground truth carried by the question records themselves ("answers": [...])."""
    truth = {}
    for item in items:
        record = item.meta.get("record", {})
        if isinstance(record.get("answers"), list) and record["answers"]:
            truth[item.key] = {"answers": text_answers(record["answers"]), "answer_type": record.get("answer_type")}
    return truth


class VQAv2(Benchmark):
    name = "vqav2"
    title = "VQAv2"
    llava_folder = "vqav2"
    question_files = ("llava_vqav2_mscoco_test-dev2015.jsonl", "llava_vqav2_*.jsonl")
    image_folders = ("test2015", "val2014", "images", ".")
    headline = "accuracy"
    offline = ("test-dev: submission file for EvalAI only; val: VQA accuracy with v2_mscoco_val2014_annotations.json "
               "(or records carrying 'answers')")
    full_split = "llava_vqav2_mscoco_test2015.jsonl"

    def read(self, root, question_file, image_folder):
        items = read_question_jsonl(self, root, question_file, image_folder, (SHORT_ANSWER,))
        return Dataset(self.name, root, question_file, items)

    def submit(self, dataset, answers, out_dir, label):
        """answers_upload/<label>.json: [{"question_id", "answer"}] over the whole test2015 split when its file is
        there ('' for unasked questions, as convert_vqav2_for_submission.py), answers EvalAI-normalised."""
        by_id = {}
        for item in dataset.items:
            text = answer_text(answers, item)
            if text is not None:
                by_id[item.question_id] = text
        full = dataset.root / self.full_split
        if "test" in dataset.question_file.name and full.is_file():
            ids = [record["question_id"] for record in read_jsonl(full)]
        else:
            ids = [item.question_id for item in dataset.items]
        rows = [{"question_id": qid, "answer": normalize_answer(by_id[qid]) if qid in by_id else ""} for qid in ids]
        return [write_json_atomic(out_dir / "answers_upload" / f"{label}.json", rows)]

    def score(self, dataset, items, answers):
        truth = _record_truth(items)
        annotation = _first_file(dataset.root, ("v2_mscoco_val2014_annotations.json", "*annotations*.json"))
        if annotation is not None and len(truth) < len(items):
            by_qid = {}
            for ann in read_json(annotation).get("annotations", []):
                by_qid[ann["question_id"]] = {"answers": text_answers(ann["answers"]),
                                              "answer_type": ann.get("answer_type")}
            for item in items:
                if item.key not in truth and item.question_id in by_qid:
                    truth[item.key] = by_qid[item.question_id]
        return score_vqa(items, answers, truth)


class VizWiz(Benchmark):
    name = "vizwiz"
    title = "VizWiz"
    llava_folder = "vizwiz"
    question_files = ("llava_test.jsonl", "llava_*.jsonl")
    image_folders = ("test", "val", "images", ".")
    headline = "accuracy"
    offline = ("test: submission file for EvalAI only; val: VQA accuracy with VizWiz val.json (as --question-file, "
               "or beside a LLaVA-style question file)")

    def read(self, root, question_file, image_folder):
        suffix = (VIZWIZ_UNANSWERABLE, SHORT_ANSWER)
        if question_file.suffix == ".json":  # VizWiz's own annotation file used directly as the question file
            records = read_json(question_file)
            if not isinstance(records, list):
                raise EdgeVLMError(f"{question_file}: expected VizWiz's list of {{image, question, answers}}")
            images = self.image_root(root, records[0]["image"] if records else None, image_folder)
            items = [EvalItem(r["image"], with_suffix(r["question"].strip(), *suffix), ImageRef(images / r["image"]),
                              meta={"record": r}) for r in records]
        else:
            items = read_question_jsonl(self, root, question_file, image_folder, suffix)
        return Dataset(self.name, root, question_file, items)

    def submit(self, dataset, answers, out_dir, label):
        """answers_upload/<label>.json: [{"image", "answer"}] (convert_vizwiz_for_submission.py); the server wants
        every question answered."""
        rows = []
        for item in dataset.items:
            text = answer_text(answers, item)
            if text is not None:
                rows.append({"image": item.meta["record"]["image"], "answer": normalize_answer(text)})
        if len(rows) < len(dataset.items):
            print(f"note: vizwiz upload file has {len(rows)} of {len(dataset.items)} answers; EvalAI needs all",
                  file=sys.stderr)
        return [write_json_atomic(out_dir / "answers_upload" / f"{label}.json", rows)]

    def score(self, dataset, items, answers):
        truth = _record_truth(items)
        annotation = _first_file(dataset.root, ("val.json", "Annotations/val.json"))
        if annotation is not None and annotation != dataset.question_file and len(truth) < len(items):
            by_image = {r["image"]: r for r in read_json(annotation) if r.get("answers")}
            for item in items:
                record = by_image.get(item.meta["record"].get("image"))
                if item.key not in truth and record is not None:
                    truth[item.key] = {"answers": text_answers(record["answers"]),
                                       "answer_type": record.get("answer_type")}
        return score_vqa(items, answers, truth)


class TextVQA(Benchmark):
    name = "textvqa"
    title = "TextVQA"
    llava_folder = "textvqa"
    question_files = ("llava_textvqa_val_v051_ocr.jsonl", "llava_textvqa_*.jsonl")
    image_folders = ("train_images", "images", ".")
    headline = "accuracy"
    offline = "val: VQA accuracy with TextVQA_0.5.1_val.json (eval_textvqa.py's matching)"
    annotation_file = "TextVQA_0.5.1_val.json"

    def read(self, root, question_file, image_folder):
        # LLaVA's file: "question\nReference OCR token: ...\n<suffix>"; the suffix is added when missing
        items = read_question_jsonl(self, root, question_file, image_folder, (SHORT_ANSWER,))
        return Dataset(self.name, root, question_file, items)

    def score(self, dataset, items, answers):
        truth = _record_truth(items)
        path = dataset.root / self.annotation_file
        if path.is_file() and len(truth) < len(items):
            data = read_json(path).get("data", [])
            by_image_question = {(str(a["image_id"]), a["question"].lower()): a for a in data}
            by_qid = {a["question_id"]: a for a in data}
            for item in items:
                if item.key in truth:
                    continue
                question = textvqa_question(item.record_prompt)
                image_stem = Path(item.meta["record"].get("image", "")).stem
                # eval_textvqa.py looks answers up by (question_id, question): LLaVA's ids there are image ids
                ann = (by_image_question.get((str(item.question_id), question))
                       or by_image_question.get((image_stem, question)))
                if ann is None and item.question_id in by_qid and by_qid[item.question_id]["question"].lower() == question:
                    ann = by_qid[item.question_id]
                if ann is not None:
                    truth[item.key] = {"answers": ann["answers"]}
        return score_vqa(items, answers, truth)


def textvqa_question(prompt: str) -> str:
    """The bare question of a TextVQA prompt, lowercased (eval_textvqa.py's prompt_processor, without its assert)."""
    lines = prompt.split("\n")
    if prompt.startswith("Reference OCR token:") and len(lines) >= 2:
        return lines[1].lower()
    return lines[0].lower()


def _first_file(root: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
    return None
