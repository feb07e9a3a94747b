"""MM-Vet: open-ended answers graded by GPT-4 with MM-Vet's own tool, so nothing is scored offline here.

Layout: llava-mm-vet.jsonl and images/ (mm-vet.zip). Questions are asked as they are (no suffix), answers may be
long (max_new_tokens 1024), and LP skips the pad-to-square step for MM-Vet (aspect 'square'). The results file is
convert_mmvet_for_eval.py's {"v1_<question_id>": answer}.
"""

from __future__ import annotations

from edge_vlm.eval.benchmarks.base import Benchmark, Dataset, answer_text, write_json_atomic
from edge_vlm.eval.benchmarks.loader import read_question_jsonl


class MMVet(Benchmark):
    name = "mmvet"
    title = "MM-Vet"
    llava_folder = "mm-vet"
    question_files = ("llava-mm-vet.jsonl", "*mm-vet*.jsonl")
    image_folders = ("images", ".")
    max_new_tokens = 1024
    aspect = "square"
    offline = "not scored offline (GPT-4 grader): results/<label>.json for MM-Vet's evaluator"

    def read(self, root, question_file, image_folder):
        items = read_question_jsonl(self, root, question_file, image_folder, ())
        return Dataset(self.name, root, question_file, items)

    def submit(self, dataset, answers, out_dir, label):
        results = {f"v1_{item.question_id}": answer_text(answers, item)
                   for item in dataset.items if item.key in answers}
        return [write_json_atomic(out_dir / "results" / f"{label}.json", results, indent=2)]
