"""MME: yes/no questions, two per image, 10 perception and 4 cognition subtasks.

Layout: llava_mme.jsonl (question_id = "category/file.png"), MME_Benchmark_release_version/ (the official release:
per category either images + .txt files side by side, or images/ and questions_answers_YN/). Ground truth comes
from the release's .txt files ("question<TAB>answer"), looked up as LLaVA's convert_answer_to_mme.py does; the
eval_tool answer files it writes are what MME's calculation.py reads.
"""

from __future__ import annotations

from pathlib import Path

from edge_vlm.configfile import read_text_file
from edge_vlm.eval.benchmarks.base import (
    SHORT_ANSWER,
    Benchmark,
    Dataset,
    answer_text,
    write_text_atomic,
)
from edge_vlm.eval.benchmarks.loader import read_question_jsonl
from edge_vlm.eval.scorers import mme_task_score, mme_totals

RELEASE = "MME_Benchmark_release_version"
YES_NO = "Please answer yes or no."


def read_release_truth(release: Path) -> dict[tuple[str, str, str], str]:
    """(category, txt file name, question) -> 'Yes'/'No' from the official release folder."""
    truth = {}
    if not release.is_dir():
        return truth
    for category_dir in sorted(p for p in release.iterdir() if p.is_dir()):
        qa_dir = category_dir / "questions_answers_YN" if (category_dir / "images").is_dir() else category_dir
        for txt in sorted(qa_dir.glob("*.txt")):
            for line in read_text_file(txt, "MME answer file").splitlines():  # a FIFO named *.txt never blocks
                if "\t" in line.strip():
                    question, answer = line.strip().split("\t")[:2]
                    truth[(category_dir.name, txt.name, question)] = answer
    return truth


def release_question(prompt: str, category: str, txt: str, truth: dict) -> str:
    """The release's wording of a LLaVA prompt (convert_answer_to_mme.py): drop the short-answer suffix, put
    'Please answer yes or no.' back (with the double space some release files use)."""
    prompt = prompt.replace(SHORT_ANSWER, "").strip() if SHORT_ANSWER in prompt else prompt
    if YES_NO not in prompt:
        prompt = f"{prompt} {YES_NO}"
        if (category, txt, prompt) not in truth:
            prompt = prompt.replace(f" {YES_NO}", f"  {YES_NO}")
    return prompt


class MME(Benchmark):
    name = "mme"
    title = "MME"
    llava_folder = "MME"
    question_files = ("llava_mme.jsonl",)
    image_folders = (RELEASE, ".")
    headline = "perception"
    offline = "perception (and cognition) score = sum of 100*(accuracy + accuracy+) per subtask, with the release's .txt answers"

    def read(self, root, question_file, image_folder):
        items = read_question_jsonl(self, root, question_file, image_folder, (SHORT_ANSWER,))
        for item in items:
            qid = str(item.question_id)
            item.meta["category"] = item.meta["record"].get("category") or qid.split("/")[0]
            item.meta["txt"] = qid.split("/")[-1].split(".")[0] + ".txt"
        return Dataset(self.name, root, question_file, items)

    def rows(self, dataset, items, answers) -> dict[str, list[tuple[str, str, str, str]]]:
        """category -> [(file, release question, ground truth, answer)] in question order; items without ground
        truth are left out."""
        truth = None
        rows: dict[str, list] = {}
        for item in items:
            record = item.meta["record"]
            category, txt = item.meta["category"], item.meta["txt"]
            question = item.record_prompt
            gt = record.get("answer")  # some redistributions carry it in the record
            if gt is None:
                if truth is None:
                    truth = read_release_truth(dataset.root / RELEASE)
                question = release_question(item.record_prompt, category, txt, truth)
                gt = truth.get((category, txt, question))
            if gt is None:
                continue
            text = answer_text(answers, item)
            rows.setdefault(category, []).append((txt, question, gt, "" if text is None else text))
        return rows

    def submit(self, dataset, answers, out_dir, label):
        """eval_tool/answers/<label>/<category>.txt: "file<TAB>question<TAB>gt<TAB>answer" lines, the input of MME's
        calculation.py (--results_dir). Tabs/newlines inside an answer become spaces so each line stays parseable."""
        answered = [item for item in dataset.items if item.key in answers]
        paths = []
        for category, rows in self.rows(dataset, answered, answers).items():
            lines = ["\t".join((f, q, gt, " ".join(a.split()))) for f, q, gt, a in rows]
            path = out_dir / "eval_tool" / "answers" / label / f"{category}.txt"
            paths.append(write_text_atomic(path, "\n".join(lines) + "\n"))
        return paths

    def score(self, dataset, items, answers):
        rows = self.rows(dataset, items, answers)
        if not rows:
            return None
        tasks = {category: mme_task_score([(gt, text) for _, _, gt, text in r]) for category, r in rows.items()}
        totals = mme_totals(tasks)
        return {**totals, "tasks": tasks, "count": sum(t["questions"] for t in tasks.values())}
