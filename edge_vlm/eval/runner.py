"""Answer a benchmark with any Engine, resumably, then write the official files and score.

Answers go to `answers.jsonl` in LLaVA's answer format, appended and flushed one by one, so an interrupted run
loses at most the question in flight; a rerun with the same --out skips every question already answered.
Questions that share an image are answered together, so the image is prepared once (vision tower + prefix KV
cache) for all of them (POPE asks 6 questions per image, MME 2). At the end: merge.jsonl (answers in question
order: what LLaVA's official scripts read), the benchmark's submission files, and scores.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edge_vlm.engine import NON_FINITE_OUTPUT, GenerationConfig, answer
from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval.benchmarks import Benchmark, Dataset, EvalItem, get_benchmark
from edge_vlm.eval.benchmarks.base import answer_key, read_jsonl, write_json_atomic, write_text_atomic
from edge_vlm.fileio import check_output_folder, check_output_parent, json_object
from edge_vlm.imaging import ASPECT_MODES, ImageConfig

ANSWERS = "answers.jsonl"
MERGED = "merge.jsonl"
RUN_FILE = "run.json"
SCORES = "scores.json"
ASPECT_CHOICES = ("auto", "model", *ASPECT_MODES)


@dataclass
class EvalResult:
    """What one benchmark run produced. `scores` is None where the answers are not public."""

    benchmark: str
    label: str
    scores: dict | None
    headline: str | None
    asked: int
    answered_now: int
    resumed: int
    images_prepared: int
    seconds: float
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    answers: dict = field(default_factory=dict, repr=False)

    @property
    def headline_value(self) -> float | None:
        if self.scores is None or self.headline is None:
            return None
        return self.scores.get(self.headline)

    def to_dict(self) -> dict:
        return {
            "benchmark": self.benchmark, "label": self.label, "headline": self.headline,
            "headline_value": self.headline_value, "scores": self.scores, "asked": self.asked,
            "answered_now": self.answered_now, "resumed": self.resumed, "images_prepared": self.images_prepared,
            "seconds": round(self.seconds, 3),
            "files": [str(p) for p in self.files],
        }


class AnswerStore:
    """answers.jsonl: one LLaVA answer record per line, appended and flushed as produced (or memory only).

    Nothing is written before the first answer: `before_first()` runs then (it records run.json), and with
    `discard` (--overwrite) the earlier answers are replaced only then, so a run that fails before answering anything
    (a damaged model) leaves the folder as it was."""

    def __init__(self, path: Path | None, before_first=None, discard: bool = False):
        self.path = path
        self.handle = None
        self.before_first = before_first
        self.discard = discard
        self.count = 0  # answers appended by this run

    def load(self) -> dict[str, dict]:
        """Answers already on disk, keyed like EvalItem.key. A torn last line (a run killed mid-write) is dropped
        and the file rewritten without it, so later appends start on a clean line."""
        if self.path is None or self.discard or not self.path.is_file():
            return {}
        # Our own file, but a crash or a disk can damage it: undecodable bytes and lines that are not answer
        # records are dropped like a torn line (those questions are asked again).
        raw = self.path.read_bytes().decode("utf-8", errors="replace")
        records, torn = [], False
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                records.append(record)
            else:
                torn = True
        if torn or (raw and not raw.endswith("\n")):
            write_text_atomic(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return {answer_key(r.get("question_id"), r.get("prompt", "")): r for r in records}

    def append(self, record: dict) -> None:
        if self.path is None:
            return
        if self.handle is None:
            if self.before_first is not None:
                self.before_first()
                self.before_first = None
            check_output_parent(self.path, "answers file")
            # kept open across answers
            self.handle = open(self.path, "w" if self.discard else "a", encoding="utf-8")  # noqa: SIM115
            self.discard = False
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()
        self.count += 1

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def group_by_image(items: list[EvalItem]) -> list[list[EvalItem]]:
    """Items sharing an image, groups in order of first appearance (text-only items are one group each)."""
    groups: dict[str, list[EvalItem]] = {}
    singles = 0
    for item in items:
        key = item.image.key if item.image is not None else f"\0text-{singles}"
        singles += item.image is None
        groups.setdefault(key, []).append(item)
    return list(groups.values())


@contextmanager
def preprocessing_aspect(engine, aspect: str | None):
    """Temporarily switch the engine's pad/square preprocessing (LP skips padding for ScienceQA and MM-Vet).
    Engines without an `image_config` keep their own and a note says so."""
    config = getattr(engine, "image_config", None)
    if aspect is None or (isinstance(config, ImageConfig) and config.aspect == aspect):
        yield config.aspect if isinstance(config, ImageConfig) else None
        return
    if not isinstance(config, ImageConfig):
        print(f"note: this engine has no image_config; cannot switch preprocessing to {aspect!r}", file=sys.stderr)
        yield None
        return
    engine.image_config = dataclasses.replace(config, aspect=aspect)
    try:
        yield aspect
    finally:
        engine.image_config = config


def resolve_aspect(benchmark: Benchmark, aspect: str) -> str | None:
    if aspect not in ASPECT_CHOICES:
        raise EdgeVLMError(f"--aspect {aspect!r} is not one of {', '.join(ASPECT_CHOICES)}")
    if aspect == "auto":
        return benchmark.aspect
    return None if aspect == "model" else aspect


def is_results_folder(folder: Path) -> bool:
    """OUT/<source>/<benchmark>/ as an earlier eval wrote it: its run.json or scores.json records the benchmark and
    the source (the answers and files beside them are then ours to resume, replace or score again)."""
    for name in (RUN_FILE, SCORES):
        try:
            record = json_object(folder / name) if (folder / name).is_file() else None
        except OSError:
            record = None
        if record is not None and "benchmark" in record and "source" in record:
            return True
    return False


def check_results_folder(folder: Path) -> None:
    """Before any answer: the results folder can be written, and is absent, empty or ours (a user's folder that
    happens to sit at OUT/<source>/<benchmark> is never written into)."""
    check_output_folder(folder, "answers folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_results_folder(folder):
        raise EdgeVLMError(f"{folder} exists and was not written by edge-vlm: choose another --out or remove it "
                           "first")


def _check_run(out_dir: Path, run: dict, overwrite: bool) -> None:
    """Refuse to mix answers of different models or settings in one answers file (run.json is written with the
    first new answer: see AnswerStore)."""
    run_path = out_dir / RUN_FILE
    if not overwrite and run_path.is_file() and (out_dir / ANSWERS).is_file():
        try:
            previous = json.loads(run_path.read_bytes())
        except (OSError, ValueError):  # damaged: nothing is known about the answers, so they count as another run's
            previous = {}
        if not isinstance(previous, dict):
            previous = {}
        changed = [k for k in ("benchmark", "source", "question_file", "max_new_tokens", "aspect")
                   if previous.get(k) != run.get(k)]
        if changed:
            detail = ", ".join(f"{k}: {previous.get(k)!r} -> {run.get(k)!r}" for k in changed)
            raise EdgeVLMError(
                f"{out_dir} holds answers from another run ({detail}); pass --overwrite to discard them or use "
                "another --out"
            )


def evaluate(engine, benchmark: str | Benchmark, data_dir, *, out_dir: str | Path | None = None,
             label: str = "model", source: str = "", limit: int | None = None, max_new_tokens: int | None = None,
             question_file=None, image_folder=None, aspect: str = "auto", overwrite: bool = False,
             progress: bool = True, dataset: Dataset | None = None) -> EvalResult:
    """Answer `benchmark` (a name or a Benchmark) from `data_dir` with `engine` (greedy), score, write files.

    With `out_dir`, answers are appended to out_dir/answers.jsonl and a rerun skips those already there; without
    it everything stays in memory (what the export gate uses). `limit` takes the first N questions of the file.
    `dataset` is the benchmark already loaded (then data_dir, question_file and image_folder are not read again).
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if limit is not None and limit < 1:
        raise EdgeVLMError(f"--limit must be >= 1, got {limit}")
    if dataset is None:
        dataset = bench.load(data_dir, question_file, image_folder)
    items = dataset.items[:limit] if limit else dataset.items
    config = GenerationConfig(max_new_tokens=max_new_tokens or bench.max_new_tokens, temperature=0.0)
    wanted_aspect = resolve_aspect(bench, aspect)

    out = Path(out_dir) if out_dir is not None else None
    record_run = None
    if out is not None:
        check_results_folder(out)  # proven writable; created with the first answer (nothing if none comes)
        run = {"benchmark": bench.name, "source": source or label, "question_file": str(dataset.question_file),
               "max_new_tokens": config.max_new_tokens, "aspect": wanted_aspect or "model"}
        _check_run(out, run, overwrite)

        def record_run():
            write_json_atomic(out / RUN_FILE, run, indent=2)
    store = AnswerStore(out / ANSWERS if out is not None else None, before_first=record_run, discard=overwrite)
    known = store.load()
    keys = {item.key for item in items}
    resumed = sum(key in known for key in keys)
    todo = [item for item in items if item.key not in known]

    start = time.perf_counter()
    try:
        with preprocessing_aspect(engine, wanted_aspect):
            prepared_count, failed = _answer_all(engine, bench, todo, config, store, known, label, progress)
    except _DamagedModel as exc:
        kept = f"; the {store.count} answers given before it are kept in {out}" if store.count else ""
        raise EdgeVLMError(f"cannot evaluate {source or label}: {exc} (question {exc.question_id}); evaluation "
                           f"stopped, no scores written{kept}") from None
    finally:
        store.close()
    seconds = time.perf_counter() - start
    if failed:
        print(f"note: {len(failed)} question(s) could not be asked and count as wrong (empty answer); first: "
              f"{failed[0]}", file=sys.stderr)

    answers = {item.key: known[item.key] for item in items if item.key in known}
    scores = _score(bench, dataset, items, answers)
    result = EvalResult(bench.name, label, scores, bench.headline if scores else None, len(items), len(todo),
                        resumed, prepared_count, seconds, out, answers=answers)
    if out is not None:
        if store.before_first is not None:  # nothing new was answered: run.json is still recorded
            store.before_first()
        merged = "".join(json.dumps(answers[item.key], ensure_ascii=False) + "\n" for item in items
                         if item.key in answers)
        result.files.append(write_text_atomic(out / MERGED, merged))
        result.files.extend(bench.submit(dataset, answers, out, label))
        summary = result.to_dict()
        summary.update(source=source or label, question_file=str(dataset.question_file),
                       max_new_tokens=config.max_new_tokens, aspect=wanted_aspect or "model",
                       offline=bench.offline)
        result.files.append(write_json_atomic(out / SCORES, summary, indent=2))
    return result


def _answer_all(engine, bench: Benchmark, todo: list[EvalItem], config: GenerationConfig, store: AnswerStore,
                known: dict, label: str, progress: bool) -> tuple[int, list[str]]:
    """Ask every item, an image's questions together; returns (images prepared, questions that failed)."""
    prepared_count = 0
    failed: list[str] = []
    with _progress(len(todo), f"{bench.name} {label}", progress) as bar:
        for group in group_by_image(todo):
            prepared = None
            if group[0].image is not None:
                prepared = engine.prepare_image(group[0].image.open())
                prepared_count += 1
            for item in group:
                metadata = {}
                try:
                    text = answer(engine, prepared, item.prompt, config=config)
                except EdgeVLMError as exc:  # e.g. a prompt longer than the model's context: wrong, not fatal
                    if NON_FINITE_OUTPUT in str(exc):  # a damaged model, not a bad question: no score means 0
                        raise _DamagedModel(str(exc), item.question_id) from None
                    text, metadata = "", {"error": str(exc)}
                    failed.append(f"{item.question_id}: {exc}")
                record = {"question_id": item.question_id, "prompt": item.record_prompt, "text": text,
                          "answer_id": uuid.uuid4().hex, "model_id": label, "metadata": metadata}
                if hasattr(bench, "record_extra"):
                    record.update(bench.record_extra(item))
                store.append(record)
                known[item.key] = record
                bar.update(1)
    return prepared_count, failed


class _DamagedModel(Exception):
    """The model's output held NaN or infinity (edge_vlm.engine.NON_FINITE_OUTPUT): every later question would fail
    the same way, and scoring the empty answers would report a damaged model as one that is merely wrong."""

    def __init__(self, message: str, question_id):
        super().__init__(message)
        self.question_id = question_id


def score_answer_file(benchmark: str | Benchmark, data_dir, answers_file: str | Path, *,
                      out_dir: str | Path | None = None, label: str | None = None, question_file=None,
                      image_folder=None, limit: int | None = None) -> EvalResult:
    """Score an existing LLaVA-format answers JSONL (ours, or one written by LLaVA's own scripts) without a model,
    and write the submission files from it when `out_dir` is given. Answers are matched to questions by
    (question_id, prompt), else by question_id alone where that id is unique."""
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    dataset = bench.load(data_dir, question_file, image_folder)
    items = dataset.items[:limit] if limit else dataset.items
    path = Path(answers_file)
    records = read_jsonl(path, "answers file")
    for number, record in enumerate(records, 1):
        if "text" in record and not isinstance(record["text"], str):
            raise EdgeVLMError(f"{path}: answer record {number} has a 'text' that is not a string "
                               f"({type(record['text']).__name__}); LLaVA's answer files hold the answer as text")
    by_key = {answer_key(r.get("question_id"), r.get("prompt", "")): r for r in records if "text" in r}
    id_counts: dict[str, int] = {}
    for item in dataset.items:
        id_counts[json.dumps(item.question_id)] = id_counts.get(json.dumps(item.question_id), 0) + 1
    by_id = {json.dumps(r.get("question_id")): r for r in records if "text" in r}
    answers = {}
    for item in items:
        record = by_key.get(item.key)
        if record is None and id_counts[json.dumps(item.question_id)] == 1:
            record = by_id.get(json.dumps(item.question_id))
        if record is not None:
            answers[item.key] = record
    if not answers:
        raise EdgeVLMError(f"no answer in {path} matches a question of {dataset.question_file}")
    if out_dir is not None:  # after the inputs are read: a refused input leaves no trace of an output check
        check_results_folder(Path(out_dir))
    label = label or path.stem
    scores = _score(bench, dataset, items, answers)
    result = EvalResult(bench.name, label, scores, bench.headline if scores else None, len(items), 0, len(answers),
                        0, 0.0, Path(out_dir) if out_dir is not None else None, answers=answers)
    if out_dir is not None:
        out = Path(out_dir)
        result.files.extend(bench.submit(dataset, answers, out, label))
        summary = result.to_dict()
        summary.update(source=f"answers:{path.resolve()}", question_file=str(dataset.question_file),
                       offline=bench.offline)
        result.files.append(write_json_atomic(out / SCORES, summary, indent=2))
    return result


def _score(bench: Benchmark, dataset: Dataset, items: list[EvalItem], answers: dict) -> dict | None:
    """bench.score, with ground-truth files of the wrong shape (the user's, beside the questions) named in one line."""
    try:
        return bench.score(dataset, items, answers)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise EdgeVLMError(f"cannot score {bench.name}: the ground-truth files under {dataset.root} are not as LLaVA "
                           f"lays them out ({type(exc).__name__}: {exc})") from exc


@contextmanager
def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="q", disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
