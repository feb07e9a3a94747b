"""The question-file shape of LLaVA's model_vqa_loader.py / model_vqa.py: JSONL lines
{"question_id", "image", "text", "category"?}; answers are written back with "prompt" = the text asked."""

from __future__ import annotations

from pathlib import Path

from edge_vlm.eval.benchmarks.base import (
    Benchmark,
    EvalItem,
    ImageRef,
    read_jsonl,
    require_keys,
    strip_image_tag,
    with_suffix,
)


def read_question_jsonl(benchmark: Benchmark, root: Path, path: Path, image_folder, suffix: tuple[str, ...]):
    """EvalItems from a LLaVA question JSONL; `suffix` lines are appended unless the file already has them."""
    records = read_jsonl(path)
    for number, record in enumerate(records, 1):
        require_keys(record, ("question_id", "text"), f"{path}:{number}")
    first_image = next((r["image"] for r in records if r.get("image")), None)
    images = benchmark.image_root(root, first_image, image_folder)
    items = []
    for record in records:
        prompt = with_suffix(strip_image_tag(record["text"]), *suffix)
        image = ImageRef(images / record["image"]) if record.get("image") else None
        items.append(EvalItem(record["question_id"], prompt, image, meta={"record": record}))
    return items
