"""MMBench: multiple choice from a TSV with base64 images (mmbench_dev_20230712.tsv).

Prompt as model_vqa_mmbench.py --single-pred-prompt: hint (if any) + question + "\\nA. ..." per option up to the
first empty one + the letter suffix. Missing values follow pandas.read_table's NA strings, as LLaVA reads the TSV
with pandas. The submission is the .xlsx of convert_mmbench_for_submission.py (needs openpyxl). The official
score (CircularEval with ChatGPT answer matching) runs on OpenCompass's server; offline, the dev split's public
answers give a single-pass letter accuracy, which is NOT the official number.
"""

from __future__ import annotations

import csv
import sys

from edge_vlm.deps import available
from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval.benchmarks.base import (
    MULTIPLE_CHOICE,
    Benchmark,
    Dataset,
    EvalItem,
    ImageRef,
    answer_text,
    write_atomic,
)
from edge_vlm.eval.scorers import sqa_letter

OPTIONS = ("A", "B", "C", "D")
# pandas' default NA strings (read_table turns these cells into NaN, which LLaVA's is_none() treats as missing)
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
# dropped by convert_mmbench_for_submission.py before 'prediction' is inserted as the 7th column
DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")


def is_missing(value: str | None) -> bool:
    """LLaVA's is_none() applied to what pandas would have read."""
    return value is None or value in PANDAS_NA or value.lower() in ("nan", "none")


def read_tsv(path) -> tuple[list[str], list[dict]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images exceed csv's 128 KiB default
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise EdgeVLMError(f"cannot read {path} as a TSV: {exc}") from exc


def _as_number(value: str):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


class MMBench(Benchmark):
    name = "mmbench"
    title = "MMBench"
    llava_folder = "mmbench"
    question_files = ("mmbench_dev_20230712.tsv", "mmbench_*.tsv", "*.tsv")
    image_folders = ()  # the images are base64 cells of the TSV
    headline = "accuracy"
    offline = ("dev: single-pass letter accuracy from the 'answer' column (NOT the official CircularEval); "
               "submission .xlsx for OpenCompass")

    def read(self, root, question_file, image_folder):
        columns, rows = read_tsv(question_file)
        missing = [c for c in ("index", "question", "A", "B", "image") if c not in columns]
        if missing:
            raise EdgeVLMError(f"{question_file}: not an MMBench TSV (missing columns {', '.join(missing)})")
        items = []
        for row in rows:
            options = []
            for letter in OPTIONS:
                if is_missing(row.get(letter)):
                    break
                options.append(row[letter])
            question = row["question"]
            if not is_missing(row.get("hint")):
                question = f"{row['hint']}\n{question}"
            for letter, option in zip(OPTIONS, options):
                question = f"{question}\n{letter}. {option}"
            qid = _as_number(row["index"])
            image = ImageRef(b64=row["image"], key=f"mmbench:{row['index']}")
            items.append(EvalItem(qid, f"{question}\n{MULTIPLE_CHOICE}", image, question,
                                  meta={"row": row, "options": options}))
        return Dataset(self.name, root, question_file, items, extra={"columns": columns})

    def record_extra(self, item: EvalItem) -> dict:
        """The extra answer-record fields model_vqa_mmbench.py writes."""
        options = item.meta["options"]
        return {"round_id": 0, "options": options, "option_char": list(OPTIONS[: len(options)])}

    def submit(self, dataset, answers, out_dir, label):
        if not available("openpyxl"):
            print("note: the MMBench submission .xlsx needs openpyxl (pip install openpyxl); answers are in "
                  "merge.jsonl", file=sys.stderr)
            return []
        from openpyxl import Workbook

        columns = [c for c in dataset.extra["columns"] if c not in DROPPED]
        columns.insert(min(6, len(columns)), "prediction")
        book = Workbook()
        sheet = book.active
        sheet.title = "Sheet1"
        sheet.append(columns)
        for item in dataset.items:
            row = dict(item.meta["row"], prediction=answer_text(answers, item))
            values = []
            for column in columns:
                value = row.get(column)
                if column == "prediction":
                    values.append(value)
                elif column == "index":
                    values.append(_as_number(value))
                else:
                    values.append(None if is_missing(value) else value)
            sheet.append(values)
        return [write_atomic(out_dir / "answers_upload" / f"{label}.xlsx", book.save)]

    def score(self, dataset, items, answers):
        scored = [item for item in items if not is_missing(item.meta["row"].get("answer"))]
        if not scored:
            return None
        right = 0
        for item in scored:
            text = answer_text(answers, item)
            letters = OPTIONS[: len(item.meta["options"])]
            right += text is not None and sqa_letter(text, letters) == item.meta["row"]["answer"].strip()
        return {"accuracy": 100 * right / len(scored), "count": len(scored),
                "note": "single pass, letter match; the official MMBench score is CircularEval on its server"}
