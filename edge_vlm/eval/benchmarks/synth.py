"""The synthetic world's held-out split (`edge-vlm data synth --out DIR` writes DIR/eval.json and DIR/images/).

eval.json is LLaVA JSON with two extra keys: {"id", "image", "conversations": [human, gpt], "question_type",
"answer"}. The human turn is asked as written (its suffixes are already there), without the `<image>` tag. Scored
by exact match (case-insensitive, stripped, trailing '.' removed), overall and per question type.
"""

from __future__ import annotations

from collections import defaultdict

from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval.benchmarks.base import (
    Benchmark,
    Dataset,
    EvalItem,
    ImageRef,
    answer_text,
    read_json,
    strip_image_tag,
)
from edge_vlm.eval.scorers import exact_match


class Synth(Benchmark):
    name = "synth"
    title = "Synthetic world"
    llava_folder = "synth"
    question_files = ("eval.json",)
    image_folders = (".", "images")
    headline = "accuracy"
    offline = "exact match overall and per question_type with each record's 'answer'"

    def read(self, root, question_file, image_folder):
        records = read_json(question_file)
        if not isinstance(records, list):
            raise EdgeVLMError(f"{question_file}: expected a LLaVA JSON list of records")
        first_image = next((r["image"] for r in records if isinstance(r, dict) and r.get("image")), None)
        images = self.image_root(root, first_image, image_folder) if first_image else root
        items = []
        for number, record in enumerate(records, 1):
            turns = record.get("conversations") if isinstance(record, dict) else None
            if not turns or "id" not in record or not isinstance(turns[0], dict) or not turns[0].get("value"):
                raise EdgeVLMError(f"{question_file}: record {number} needs 'id' and a human turn in 'conversations'")
            answer = record.get("answer")
            if answer is None and len(turns) > 1:
                answer = turns[1].get("value")
            image = ImageRef(images / record["image"]) if record.get("image") else None
            meta = {"record": record, "answer": answer, "question_type": record.get("question_type", "all")}
            items.append(EvalItem(record["id"], strip_image_tag(turns[0]["value"]), image, meta=meta))
        return Dataset(self.name, root, question_file, items)

    def score(self, dataset, items, answers):
        per_type: dict[str, list[bool]] = defaultdict(list)
        for item in items:
            if item.meta["answer"] is None:
                continue
            text = answer_text(answers, item)
            per_type[item.meta["question_type"]].append(text is not None and exact_match(text, item.meta["answer"]))
        if not per_type:
            return None
        every = [hit for hits in per_type.values() for hit in hits]
        return {
            "accuracy": 100 * sum(every) / len(every),
            "count": len(every),
            "by_question_type": {t: 100 * sum(h) / len(h) for t, h in sorted(per_type.items())},
            "count_by_question_type": {t: len(h) for t, h in sorted(per_type.items())},
        }
