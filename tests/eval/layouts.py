"""Small evaluation folders in the layouts LLaVA's docs/Evaluation.md describes, plus a scripted engine.

Every file is written here by hand in the distributed format (field names and nesting as the official files),
with a few questions each, so the readers, the prompts and the answer files can be checked exactly.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

from edge_vlm.engine import PreparedImage
from edge_vlm.imaging import load_image

SUFFIX = "Answer the question using a single word or phrase."
MC = "Answer with the option's letter from the given choices directly."


def image(path: Path, color=(200, 30, 30), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def sqa(root: Path) -> Path:
    """scienceqa/: llava_test_CQM-A.json, images/test/<id>/image.png, problems.json, pid_splits.json."""
    records = [
        {"id": "11", "image": "11/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: N/A\nWhich animal is a mammal?\nA. dog\nB. trout"},
            {"from": "gpt", "value": "A"}]},
        {"id": "12", "conversations": [
            {"from": "human", "value": "Context: A cup.\nWhich is softest?\nA. rock\nB. nail\nC. pillow"},
            {"from": "gpt", "value": "C"}]},
        {"id": "13", "image": "13/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: N/A\nWhich color is shown?\nA. red\nB. blue"},
            {"from": "gpt", "value": "A"}]},
    ]
    dump(root / "llava_test_CQM-A.json", records)
    image(root / "images/test/11/image.png")
    image(root / "images/test/13/image.png", (30, 30, 200))
    dump(root / "problems.json", {
        "11": {"answer": 0, "choices": ["dog", "trout"], "image": "image.png"},
        "12": {"answer": 2, "choices": ["rock", "nail", "pillow"], "image": None},
        "13": {"answer": 0, "choices": ["red", "blue"], "image": "image.png"},
    })
    dump(root / "pid_splits.json", {"test": ["11", "12", "13"]})
    return root


def pope(root: Path) -> Path:
    """pope/: llava_pope_test.jsonl (question text without the suffix), val2014/, coco/coco_pope_<split>.json."""
    img_a, img_b = "COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg"
    image(root / "val2014" / img_a)
    image(root / "val2014" / img_b, (20, 200, 20))
    questions = [
        (1, img_a, "Is there a dog in the image?", "adversarial", "yes"),
        (2, img_a, "Is there a cat in the image?", "adversarial", "no"),
        (3, img_b, "Is there a car in the image?", "adversarial", "no"),
        (4, img_b, "Is there a tree in the image?", "adversarial", "yes"),
        (5, img_a, "Is there a dog in the image?", "random", "yes"),
        (6, img_a, "Is there a bus in the image?", "random", "no"),
    ]
    jsonl(root / "llava_pope_test.jsonl",
          [{"question_id": q, "image": i, "text": t, "category": c} for q, i, t, c, _ in questions])
    for split in ("adversarial", "random"):
        rows = [(q, i, t, label) for q, i, t, c, label in questions if c == split]
        jsonl(root / "coco" / f"coco_pope_{split}.json",
              [{"question_id": n, "image": i, "text": t, "label": label} for n, (_, i, t, label) in enumerate(rows, 1)])
    return root


def mme(root: Path) -> Path:
    """MME/: llava_mme.jsonl + MME_Benchmark_release_version/ in both release layouts (flat, images/ + qa/)."""
    release = root / "MME_Benchmark_release_version"
    image(release / "existence/000000006040.jpg")
    (release / "existence/000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image?  Please answer yes or no.\tNo\n"  # the release's double-space variant
    )
    image(release / "artwork/images/10002.jpg", (90, 90, 20))
    (release / "artwork/questions_answers_YN").mkdir(parents=True)
    (release / "artwork/questions_answers_YN/10002.txt").write_text(
        "Is this artwork created by Leonardo? Please answer yes or no.\tNo\n"
        "Is this artwork created by Monet? Please answer yes or no.\tYes\n"
    )
    jsonl(root / "llava_mme.jsonl", [
        {"question_id": "existence/000000006040.jpg", "image": "existence/000000006040.jpg",
         "text": f"Is there a train in this image?\n{SUFFIX}", "category": "existence"},
        {"question_id": "existence/000000006040.jpg", "image": "existence/000000006040.jpg",
         "text": f"Is there a bed in this image?\n{SUFFIX}", "category": "existence"},
        {"question_id": "artwork/10002.jpg", "image": "artwork/images/10002.jpg",
         "text": f"Is this artwork created by Leonardo?\n{SUFFIX}", "category": "artwork"},
        {"question_id": "artwork/10002.jpg", "image": "artwork/images/10002.jpg",
         "text": f"Is this artwork created by Monet?\n{SUFFIX}", "category": "artwork"},
    ])
    return root


def vqav2(root: Path) -> Path:
    """vqav2/: test-dev questions, the full test2015 question list, test2015/ images; plus a val split with
    official-format annotations for offline scoring (llava_vqav2_val.jsonl, val2014/)."""
    img = "COCO_test2015_000000262144.jpg"
    image(root / "test2015" / img)
    dev = [{"question_id": 262144000, "image": img, "text": f"How many dogs?\n{SUFFIX}", "category": "default"},
           {"question_id": 262144001, "image": img, "text": f"Is it sunny?\n{SUFFIX}", "category": "default"}]
    jsonl(root / "llava_vqav2_mscoco_test-dev2015.jsonl", dev)
    jsonl(root / "llava_vqav2_mscoco_test2015.jsonl",
          [*dev, {"question_id": 262144002, "image": img, "text": f"What color?\n{SUFFIX}", "category": "default"}])
    image(root / "val2014/COCO_val2014_000000000042.jpg")
    jsonl(root / "llava_vqav2_val.jsonl", [
        {"question_id": 42000, "image": "COCO_val2014_000000000042.jpg", "text": f"How many dogs?\n{SUFFIX}"},
        {"question_id": 42001, "image": "COCO_val2014_000000000042.jpg", "text": f"What is it?\n{SUFFIX}"},
    ])

    def answers(*values):
        return [{"answer": v, "answer_confidence": "yes", "answer_id": n + 1} for n, v in enumerate(values)]

    dump(root / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 42000, "answer_type": "number", "multiple_choice_answer": "2",
         "answers": answers(*(["2"] * 2 + ["3"] * 8))},
        {"question_id": 42001, "answer_type": "other", "multiple_choice_answer": "dog",
         "answers": answers(*(["dog"] * 10))},
    ]})
    return root


def gqa(root: Path) -> Path:
    """gqa/: llava_gqa_testdev_balanced.jsonl, data/images/, data/testdev_balanced_questions.json."""
    image(root / "data/images/n161313.jpg")
    jsonl(root / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": "201307251", "image": "n161313.jpg", "text": f"Is it an indoors scene?\n{SUFFIX}"},
        {"question_id": "201640614", "image": "n161313.jpg", "text": f"Who is wearing a shirt?\n{SUFFIX}"},
        {"question_id": "20968379", "image": "n161313.jpg", "text": f"Which side is the cup on?\n{SUFFIX}"},
    ])
    dump(root / "data/testdev_balanced_questions.json", {
        "201307251": {"answer": "no", "isBalanced": True, "imageId": "n161313", "question": "Is it an indoors scene?",
                      "types": {"structural": "verify", "semantic": "global", "detailed": "place"}},
        "201640614": {"answer": "man", "isBalanced": True, "imageId": "n161313", "question": "Who is wearing a shirt?",
                      "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
        "20968379": {"answer": "left", "isBalanced": True, "imageId": "n161313", "question": "Which side?",
                     "types": {"structural": "query", "semantic": "attr", "detailed": "positionQuery"}},
    })
    return root


def textvqa(root: Path) -> Path:
    """textvqa/: llava_textvqa_val_v051_ocr.jsonl (question_id = the image id, as eval_textvqa.py looks it up),
    train_images/, TextVQA_0.5.1_val.json."""
    image(root / "train_images/003a8ae2ef43b901.jpg")
    jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg",
         "text": f"what brand is the camera?\nReference OCR token: dakota, digital\n{SUFFIX}"},
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg",
         "text": "what is written on the top?\nReference OCR token: dakota, digital"},  # suffix missing: added
    ])
    dump(root / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"question_id": 34602, "image_id": "003a8ae2ef43b901", "question": "what brand is the camera?",
         "answers": ["dakota"] * 8 + ["dakota digital"] * 2},
        {"question_id": 34603, "image_id": "003a8ae2ef43b901", "question": "what is written on the top?",
         "answers": ["digital"] * 2 + ["dakota"] * 8},
    ]})
    return root


def vizwiz(root: Path) -> Path:
    """vizwiz/: llava_test.jsonl + test/ (no answers); val.json (VizWiz's own format) + val/ for scoring."""
    image(root / "test/VizWiz_test_00000000.jpg")
    jsonl(root / "llava_test.jsonl", [
        {"question_id": 0, "image": "VizWiz_test_00000000.jpg", "text": "What is this?", "category": "default"}])
    image(root / "val/VizWiz_val_00000000.jpg")
    dump(root / "val.json", [{"image": "VizWiz_val_00000000.jpg", "question": "What is this?",
                              "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 6
                              + [{"answer": "soup", "answer_confidence": "maybe"}] * 4,
                              "answer_type": "unanswerable", "answerable": 0}])
    return root


def _b64_png(color) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 30), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def mmbench(root: Path) -> Path:
    """mmbench/: mmbench_dev_20230712.tsv with base64 images (columns as the dev release)."""
    head = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
            "comment", "split"]
    rows = [
        ["241", "Which is the largest?", "Look at the shapes.", "circle", "square", "star", "", "B",
         "size", _b64_png((200, 0, 0)), "synthetic", "perception", "nan", "dev"],
        ["242", "What is shown?", "nan", "a cat", "a dog", "None", "a bird", "A",
         "object", _b64_png((0, 0, 200)), "synthetic", "perception", "nan", "dev"],
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "mmbench_dev_20230712.tsv").write_text("\n".join("\t".join(r) for r in [head, *rows]) + "\n")
    return root


def mmvet(root: Path) -> Path:
    image(root / "images/v1_0.png")
    jsonl(root / "llava-mm-vet.jsonl", [{"question_id": 0, "image": "v1_0.png", "text": "What is x in the equation?"}])
    return root


def synth(root: Path) -> Path:
    """synth/: eval.json (LLaVA JSON + question_type + answer) and images/, as `edge-vlm data synth` writes."""
    image(root / "images/eval_00000.png", (200, 20, 20))
    image(root / "images/eval_00001.png", (20, 20, 200))

    def record(i, img, question, answer, kind):
        return {"id": f"eval-{i}", "image": img, "question_type": kind, "answer": answer, "conversations": [
            {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}

    dump(root / "eval.json", [
        record(0, "images/eval_00000.png", f"What color is the square?\n{SUFFIX}", "red", "color"),
        record(1, "images/eval_00000.png", f"Is there a red square in the image?\n{SUFFIX}", "yes", "exist"),
        record(2, "images/eval_00001.png", f"How many circles are there?\n{SUFFIX}", "2", "count"),
    ])
    return root


class ScriptedEngine:
    """An Engine that answers from a script: the first (substring -> answer) entry found in the question, else
    `default`. It records what it was asked and loads every image it is given (so a bad path fails like a real
    engine). Used to test the harness, never the model."""

    num_image_tokens = 1
    context_length = 2048

    def __init__(self, script: dict[str, str] | None = None, default: str = "yes", fail_after: int | None = None):
        self.script = script or {}
        self.default = default
        self.asked: list[tuple[str | None, str]] = []
        self.prepared = 0
        self.fail_after = fail_after

    def prepare_image(self, image):
        loaded = load_image(image)
        self.prepared += 1
        return PreparedImage(features=loaded.size, prefix_cache=None, prefix_ids=[])

    def stream(self, prepared, question, history=None, config=None):
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise KeyboardInterrupt  # an interrupted run
        self.asked.append((None if prepared is None else prepared.features, question))
        text = next((a for key, a in self.script.items() if key in question), self.default)
        yield " "
        yield from (text[: len(text) // 2], text[len(text) // 2 :])
