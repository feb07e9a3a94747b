"""POPE: yes/no object hallucination on COCO val2014, three splits (adversarial, popular, random).

Layout (LLaVA docs/Evaluation.md): llava_pope_test.jsonl (each line has "category" = the split), val2014/ images,
coco/coco_pope_{split}.json (POPE's annotation files: one JSON object per line with "label"). eval_pope.py pairs a
split's answers with its annotation lines by position; this does the same and checks that the pairs agree.
"""

from __future__ import annotations

from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval.benchmarks.base import SHORT_ANSWER, Benchmark, Dataset, answer_text, read_jsonl
from edge_vlm.eval.benchmarks.loader import read_question_jsonl
from edge_vlm.eval.scorers import pope_metrics

SPLITS = ("adversarial", "popular", "random")


class POPE(Benchmark):
    name = "pope"
    title = "POPE"
    llava_folder = "pope"
    question_files = ("llava_pope_test.jsonl", "llava_pope*.jsonl")
    image_folders = ("val2014", "images", ".")
    headline = "f1"
    offline = "accuracy, precision, recall, F1, yes-ratio per split with coco/coco_pope_*.json (or 'label' in records)"

    def read(self, root, question_file, image_folder):
        items = read_question_jsonl(self, root, question_file, image_folder, (SHORT_ANSWER,))
        return Dataset(self.name, root, question_file, items)

    def labels(self, dataset, items) -> dict[str, str]:
        """item.key -> 'yes'/'no': from the records' "label", else from the annotation file of the item's split,
        paired by position within the split (eval_pope.py), checking image and question agree."""
        labels = {}
        by_split: dict[str, list] = {}
        for item in dataset.items:
            record = item.meta["record"]
            if record.get("label") in ("yes", "no"):
                labels[item.key] = record["label"]
            else:
                by_split.setdefault(record.get("category", ""), []).append(item)
        wanted = {item.key for item in items}
        for split, split_items in by_split.items():
            if not any(item.key in wanted for item in split_items):
                continue
            path = dataset.root / "coco" / f"coco_pope_{split}.json"
            if not path.is_file():
                continue
            annotations = read_jsonl(path)
            for position, item in enumerate(split_items):
                if position >= len(annotations):
                    raise EdgeVLMError(f"{path} has {len(annotations)} lines but split {split!r} has more questions")
                ann = annotations[position]
                record = item.meta["record"]
                same_question = ann.get("text", "").strip() in item.prompt
                if ann.get("image") != record.get("image") or not same_question:
                    raise EdgeVLMError(
                        f"{path} line {position + 1} ({ann.get('image')}: {ann.get('text')!r}) does not match "
                        f"question {item.question_id} ({record.get('image')}); the files are not in the same order"
                    )
                labels[item.key] = ann["label"]
        return labels

    def score(self, dataset, items, answers):
        labels = self.labels(dataset, items)
        per_split: dict[str, tuple[list, list]] = {}
        for item in items:
            if item.key not in labels:
                continue
            text = answer_text(answers, item)
            preds, gts = per_split.setdefault(item.meta["record"].get("category", "all"), ([], []))
            preds.append("" if text is None else text)  # no answer parses as 'yes', like a vague one
            gts.append(labels[item.key])
        if not per_split:
            return None
        splits = {}
        for split in sorted(per_split, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)):
            metrics = pope_metrics(*per_split[split])
            splits[split] = {k: (100 * v if k in ("accuracy", "precision", "recall", "f1", "yes_ratio") else v)
                             for k, v in metrics.items()}
        mean = {k: sum(s[k] for s in splits.values()) / len(splits) for k in ("accuracy", "f1", "precision",
                                                                           "recall", "yes_ratio")}
        return {**mean, "splits": splits, "count": sum(s["count"] for s in splits.values())}
