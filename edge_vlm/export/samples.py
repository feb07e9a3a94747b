"""Validation and calibration samples for an export: LLaVA-format JSON (the eval split's shape), or the synthetic
world's held-out questions generated on the spot when no file is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_vlm.errors import EdgeVLMError


@dataclass
class ExportSample:
    id: str
    image: Path | None
    turns: list[tuple[str, str]]  # (question, answer) pairs, `<image>` already taken out of the first question
    answer: str | None  # the reference answer of the first question ("answer" key of eval records), if any
    question_type: str | None = None

    @property
    def question(self) -> str:
        return self.turns[0][0]


def load_samples(path: str | Path, limit: int | None = None) -> list[ExportSample]:
    """Samples from a LLaVA JSON / JSONL file; image paths are relative to the file's folder."""
    from edge_vlm.data.formats import read_llava_json

    path = Path(path)
    records = read_llava_json(path)
    samples, bad = [], []
    for record in records[: limit or None]:
        if record.issues or not record.turns:
            bad.append(record.id)
            continue
        image = None
        if record.image is not None:
            image = Path(record.image) if Path(record.image).is_absolute() else path.parent / record.image
            if not image.is_file():
                raise EdgeVLMError(f"{path}: sample {record.id} names image {record.image}, not found at {image}")
        answer = record.extra.get("answer", record.turns[0][1])
        samples.append(ExportSample(record.id, image, list(record.turns), str(answer) if answer is not None else None,
                                    record.extra.get("question_type")))
    if bad:
        raise EdgeVLMError(f"{path}: {len(bad)} malformed record(s), e.g. {bad[:3]}; check it with `edge-vlm data`")
    if not samples:
        raise EdgeVLMError(f"{path} holds no usable samples")
    return samples


def synthetic_samples(work_dir: Path, count: int, image_size: int, seed: int = 0) -> list[ExportSample]:
    """`count` held-out questions of the synthetic world (edge_vlm.data.synth), written under `work_dir`."""
    from edge_vlm.data.synth import write_world

    world = Path(work_dir) / "synthetic-val"
    write_world(world, seed=seed, train=1, eval_size=count, image_size=max(32, image_size), progress=False,
                force=True)
    return load_samples(world / "eval.json", limit=count)


def normalize_answer(text: str) -> str:
    """Lower case, no surrounding spaces or final full stop: how short answers are compared."""
    return text.strip().rstrip(".").strip().lower()
