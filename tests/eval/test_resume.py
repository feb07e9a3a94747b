"""Resume: answers are appended as produced, a rerun skips answered questions, and the final scores equal those
of a single uninterrupted run (with a scripted engine and with the real tiny PyTorch model)."""

from __future__ import annotations

import json

import pytest

from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval import evaluate
from tests.eval import layouts
from tests.eval.layouts import ScriptedEngine

SCRIPT = {"color": "red", "red square": "no", "circles": "2"}


def _answers(out):
    return [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]


def test_interrupted_run_resumes_and_matches_a_single_run(tmp_path):
    data = layouts.synth(tmp_path / "synth")
    single = evaluate(ScriptedEngine(SCRIPT), "synth", data, out_dir=tmp_path / "single", progress=False)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        evaluate(ScriptedEngine(SCRIPT, fail_after=2), "synth", data, out_dir=out, progress=False)
    assert len(_answers(out)) == 2  # flushed one by one before the interruption

    engine = ScriptedEngine(SCRIPT)
    resumed = evaluate(engine, "synth", data, out_dir=out, progress=False)
    assert len(engine.asked) == 1 and "circles" in engine.asked[0][1]  # only the unanswered question
    assert (resumed.resumed, resumed.answered_now) == (2, 1)
    assert resumed.scores == single.scores
    assert (out / "merge.jsonl").read_text().count("\n") == 3

    again = ScriptedEngine(SCRIPT)
    evaluate(again, "synth", data, out_dir=out, progress=False)
    assert again.asked == [] and again.prepared == 0  # everything answered: nothing asked, no image prepared


def test_limit_then_full_run(tmp_path):
    data = layouts.pope(tmp_path / "pope")
    out = tmp_path / "out"
    first = ScriptedEngine()
    limited = evaluate(first, "pope", data, out_dir=out, limit=2, progress=False)
    assert limited.asked == 2 and len(first.asked) == 2
    assert limited.scores["count"] == 2  # scored over the questions asked
    rest = ScriptedEngine()
    full = evaluate(rest, "pope", data, out_dir=out, progress=False)
    assert len(rest.asked) == 4 and full.scores["count"] == 6


def test_torn_last_line_is_dropped_and_reasked(tmp_path):
    data = layouts.synth(tmp_path / "synth")
    out = tmp_path / "out"
    evaluate(ScriptedEngine(SCRIPT), "synth", data, out_dir=out, progress=False)
    lines = (out / "answers.jsonl").read_text().splitlines()
    (out / "answers.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # killed mid-write
    engine = ScriptedEngine(SCRIPT)
    result = evaluate(engine, "synth", data, out_dir=out, progress=False)
    assert len(engine.asked) == 1 and result.scores["count"] == 3
    assert len(_answers(out)) == 3  # every line parses again


def test_answers_of_another_model_are_not_mixed_in(tmp_path):
    data = layouts.synth(tmp_path / "synth")
    out = tmp_path / "out"
    evaluate(ScriptedEngine(SCRIPT), "synth", data, out_dir=out, source="model:/a", progress=False)
    with pytest.raises(EdgeVLMError, match="--overwrite"):
        evaluate(ScriptedEngine(SCRIPT), "synth", data, out_dir=out, source="model:/b", progress=False)
    with pytest.raises(EdgeVLMError, match="max_new_tokens"):
        evaluate(ScriptedEngine(SCRIPT), "synth", data, out_dir=out, source="model:/a", max_new_tokens=7,
                 progress=False)
    engine = ScriptedEngine(SCRIPT)
    evaluate(engine, "synth", data, out_dir=out, source="model:/b", overwrite=True, progress=False)
    assert len(engine.asked) == 3


class _CountingEngine:
    """Passes through to a real engine, counting prepares, optionally interrupting after N answers."""

    def __init__(self, engine, stop_after: int | None = None):
        self.engine, self.stop_after = engine, stop_after
        self.prepared = self.answered = 0
        self.image_config = engine.image_config
        self.num_image_tokens, self.context_length = engine.num_image_tokens, engine.context_length

    def prepare_image(self, image):
        self.prepared += 1
        return self.engine.prepare_image(image)

    def stream(self, prepared, question, history=None, config=None):
        if self.stop_after is not None and self.answered >= self.stop_after:
            raise KeyboardInterrupt
        self.answered += 1
        yield from self.engine.stream(prepared, question, history, config)


def test_resume_with_the_tiny_torch_model(tiny_checkpoint, tmp_path):
    from edge_vlm.model.engine import TorchEngine

    torch_engine = TorchEngine.from_checkpoint(tiny_checkpoint)
    data = layouts.synth(tmp_path / "synth")
    single_engine = _CountingEngine(torch_engine)
    single = evaluate(single_engine, "synth", data, out_dir=tmp_path / "single", max_new_tokens=6, progress=False)
    assert single_engine.prepared == 2  # 3 questions about 2 images

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        evaluate(_CountingEngine(torch_engine, stop_after=1), "synth", data, out_dir=out, max_new_tokens=6,
                 progress=False)
    second = _CountingEngine(torch_engine)
    resumed = evaluate(second, "synth", data, out_dir=out, max_new_tokens=6, progress=False)
    assert second.answered == 2
    assert resumed.scores == single.scores
    texts = lambda result: {k: v["text"] for k, v in result.answers.items()}  # noqa: E731
    assert texts(resumed) == texts(single)  # greedy decoding: the same answers either way
