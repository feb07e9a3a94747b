"""ScienceQA (the paper reports accuracy on its image subset, SQA-IMG).

Layout (LLaVA docs/Evaluation.md): llava_test_CQM-A.json (LLaVA JSON: {"id", "image"?, "conversations"}; the human
turn holds context, question and lettered options), images/test/<id>/image.png, problems.json and pid_splits.json
from the ScienceQA repo (ground truth: "answer" index and "choices"). Prompt and answer records follow
model_vqa_science.py --single-pred-prompt; scoring follows eval_science_qa.py. LP's script skips the pad-to-square
step for ScienceQA, so this benchmark asks for aspect 'square'.
"""

from __future__ import annotations

from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval.benchmarks.base import (
    IMAGE_TAG,
    MULTIPLE_CHOICE,
    Benchmark,
    Dataset,
    EvalItem,
    ImageRef,
    answer_text,
    read_json,
    strip_image_tag,
    with_suffix,
)
from edge_vlm.eval.scorers import SQA_OPTIONS, sqa_is_correct, sqa_letter


class ScienceQA(Benchmark):
    name = "sqa"
    title = "ScienceQA-IMG"
    llava_folder = "scienceqa"
    question_files = ("llava_test_CQM-A.json", "llava_test_*.json")
    image_folders = ("images/test", "test", "images", ".")
    aspect = "square"
    headline = "img_accuracy"
    offline = "accuracy and image-subset accuracy with problems.json (or the gpt turn of each record)"

    def read(self, root, question_file, image_folder):
        records = read_json(question_file)
        if not isinstance(records, list):
            raise EdgeVLMError(f"{question_file}: expected a LLaVA JSON list of {{id, image, conversations}}")
        first_image = next((r["image"] for r in records if r.get("image")), None)
        images = self.image_root(root, first_image, image_folder) if first_image else None
        items = []
        for number, record in enumerate(records, 1):
            turns = record.get("conversations") or []
            if "id" not in record or not turns or not isinstance(turns[0], dict) or "value" not in turns[0]:
                raise EdgeVLMError(f"{question_file}: record {number} needs 'id' and a human turn in 'conversations'")
            question = strip_image_tag(turns[0]["value"])
            prompt = with_suffix(question, MULTIPLE_CHOICE)
            image = ImageRef(images / record["image"]) if record.get("image") else None
            # model_vqa_science writes "<image>\n" in front of the recorded prompt; eval_science_qa.py uses it to
            # tell image questions (the IMG subset) from text-only ones
            record_prompt = f"{IMAGE_TAG}\n{prompt}" if image is not None else prompt
            items.append(EvalItem(record["id"], prompt, image, record_prompt, meta={"record": record}))
        return Dataset(self.name, root, question_file, items)

    def truth(self, dataset) -> dict[str, tuple[int, int]]:
        """id -> (answer index, number of choices) from problems.json, else from each record's gpt turn."""
        problems_path = dataset.root / "problems.json"
        if problems_path.is_file():
            problems = read_json(problems_path)
            return {pid: (p["answer"], len(p["choices"])) for pid, p in problems.items()}
        truth = {}
        for item in dataset.items:
            turns = item.meta["record"]["conversations"]
            letter = sqa_letter(turns[1]["value"].strip()) if len(turns) > 1 else None
            if letter is not None:
                # the number of choices is not in the record: any option letter may be the answer
                truth[str(item.question_id)] = (SQA_OPTIONS.index(letter), len(SQA_OPTIONS))
        return truth

    def score(self, dataset, items, answers):
        truth = self.truth(dataset)
        scored = [item for item in items if str(item.question_id) in truth]
        if not scored:
            return None
        right = right_img = total_img = 0
        for item in scored:
            answer_index, num_choices = truth[str(item.question_id)]
            text = answer_text(answers, item)
            correct = text is not None and sqa_is_correct(text, answer_index, num_choices)
            right += correct
            if item.image is not None:
                total_img += 1
                right_img += correct
        return {
            "img_accuracy": 100 * right_img / total_img if total_img else None,
            "accuracy": 100 * right / len(scored),
            "count": len(scored),
            "img_count": total_img,
        }
