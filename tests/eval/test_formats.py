"""Answer files in the official shapes and offline scores of scripted answers, computed by hand."""

from __future__ import annotations

import json

import pytest

from edge_vlm.eval import evaluate
from edge_vlm.eval.runner import score_answer_file
from tests.eval import layouts
from tests.eval.layouts import ScriptedEngine


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pope_scores_per_split_and_llava_answer_file(tmp_path):
    engine = ScriptedEngine({"dog": "Yes", "cat": "No", "car": "Yes, there is a car.", "tree": "There is not a tree.",
                             "bus": "no"})
    out = tmp_path / "out"
    result = evaluate(engine, "pope", layouts.pope(tmp_path / "pope"), out_dir=out, label="m", progress=False)
    assert engine.prepared == 2  # 6 questions, 2 images: each prepared once
    adversarial, random = result.scores["splits"]["adversarial"], result.scores["splits"]["random"]
    # adversarial: TP (dog), TN (cat), FP (car: label no), FN (tree: label yes)
    assert (adversarial["tp"], adversarial["tn"], adversarial["fp"], adversarial["fn"]) == (1, 1, 1, 1)
    assert adversarial["accuracy"] == adversarial["f1"] == adversarial["yes_ratio"] == pytest.approx(50)
    assert random["accuracy"] == random["f1"] == pytest.approx(100) and random["yes_ratio"] == pytest.approx(50)
    assert result.scores["f1"] == pytest.approx(75) and result.headline_value == pytest.approx(75)
    merged = _lines(out / "merge.jsonl")  # question order, LLaVA's answer record keys
    assert [r["question_id"] for r in merged] == [1, 2, 3, 4, 5, 6]
    assert set(merged[0]) >= {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert merged[2]["text"] == "Yes, there is a car."
    saved = json.loads((out / "scores.json").read_text())
    assert saved["headline"] == "f1" and saved["headline_value"] == pytest.approx(75)


def test_scoring_a_prepared_llava_answer_file(tmp_path):
    """An answers file as LLaVA's model_vqa_loader writes it (prompt = the file's text, here without our suffix):
    matched by question id, scored by hand: predictions yes, yes, no, no | yes, yes."""
    root = layouts.pope(tmp_path / "pope")
    texts = ["Yes", "Yes", "No", "No.", "Yes", "Yes"]
    answers = [{"question_id": n, "prompt": "whatever LLaVA asked", "text": t, "answer_id": "x", "model_id": "llava",
                "metadata": {}} for n, t in enumerate(texts, 1)]
    layouts.jsonl(tmp_path / "llava-answers.jsonl", answers)
    result = score_answer_file("pope", root, tmp_path / "llava-answers.jsonl", out_dir=tmp_path / "scored")
    adversarial, random = result.scores["splits"]["adversarial"], result.scores["splits"]["random"]
    # adversarial labels yes, no, no, yes: TP 1, FP 1, TN 1, FN 1; random labels yes, no: TP 1, FP 1
    assert (adversarial["tp"], adversarial["fp"], adversarial["tn"], adversarial["fn"]) == (1, 1, 1, 1)
    assert (random["tp"], random["fp"], random["tn"], random["fn"]) == (1, 1, 0, 0)
    assert random["precision"] == pytest.approx(50) and random["recall"] == pytest.approx(100)
    assert random["f1"] == pytest.approx(100 * 2 * 0.5 * 1 / 1.5)
    assert (tmp_path / "scored/scores.json").is_file()


def test_sqa_image_accuracy_and_record_prompts(tmp_path):
    engine = ScriptedEngine({"mammal": "A", "softest": "The answer is C.", "color": "B"})
    out = tmp_path / "out"
    result = evaluate(engine, "sqa", layouts.sqa(tmp_path / "sqa"), out_dir=out, progress=False)
    assert result.scores["accuracy"] == pytest.approx(200 / 3)  # 11 right, 12 right, 13 wrong
    assert result.scores["img_accuracy"] == pytest.approx(50)  # image questions 11 (right) and 13 (wrong)
    assert result.headline == "img_accuracy"
    merged = {r["question_id"]: r for r in _lines(out / "merge.jsonl")}
    assert merged["11"]["prompt"].startswith("<image>\n") and not merged["12"]["prompt"].startswith("<image>")
    assert [q for _, q in engine.asked if "<image>" in q] == []  # the tag is never sent as text


def test_mme_eval_tool_files_and_score(tmp_path):
    engine = ScriptedEngine({"train": "Yes", "bed": "No, there is\nno bed.", "Leonardo": "Yes", "Monet": "Yes"})
    out = tmp_path / "out"
    result = evaluate(engine, "mme", layouts.mme(tmp_path / "MME"), out_dir=out, label="m", progress=False)
    tasks = result.scores["tasks"]
    assert tasks["existence"]["score"] == pytest.approx(200)  # both right: 100 * (1 + 1)
    assert tasks["artwork"]["score"] == pytest.approx(50)  # one of two right, image not both: 100 * (0.5 + 0)
    assert result.scores["perception"] == pytest.approx(250)
    lines = (out / "eval_tool/answers/m/existence.txt").read_text().splitlines()
    assert lines == [
        "000000006040.txt\tIs there a train in this image? Please answer yes or no.\tYes\tYes",
        "000000006040.txt\tIs there a bed in this image?  Please answer yes or no.\tNo\tNo, there is no bed.",
    ]
    assert len((out / "eval_tool/answers/m/artwork.txt").read_text().splitlines()) == 2


def test_vqav2_submission_covers_the_full_test_split(tmp_path):
    engine = ScriptedEngine({"How many dogs": "Two.", "sunny": "Yes"})
    out = tmp_path / "out"
    result = evaluate(engine, "vqav2", layouts.vqav2(tmp_path / "vqav2"), out_dir=out, label="m", progress=False)
    assert result.scores is None  # test-dev answers are not public
    upload = json.loads((out / "answers_upload/m.json").read_text())
    assert upload == [{"question_id": 262144000, "answer": "2"}, {"question_id": 262144001, "answer": "yes"},
                      {"question_id": 262144002, "answer": ""}]


def test_vqav2_val_scored_with_official_annotations(tmp_path):
    engine = ScriptedEngine({"How many dogs": "2", "What is it": "A dog."})
    result = evaluate(engine, "vqav2", layouts.vqav2(tmp_path / "vqav2"), question_file="llava_vqav2_val.jsonl",
                      progress=False)
    # '2' is given by 2 of 10 annotators -> 0.6; 'A dog.' normalises to 'dog', 10 of 10 -> 1.0
    assert result.scores["accuracy"] == pytest.approx(80)
    assert result.scores["accuracy_by_answer_type"] == pytest.approx({"number": 60, "other": 100})


def test_textvqa_matched_like_eval_textvqa(tmp_path):
    engine = ScriptedEngine({"brand": "Dakota", "written": "digital"})
    result = evaluate(engine, "textvqa", layouts.textvqa(tmp_path / "textvqa"), progress=False)
    # 'dakota' 8 of 10 -> 1.0; 'digital' 2 of 10 -> (2/3 * ... ) = 0.6
    assert result.scores["accuracy"] == pytest.approx(80) and result.scores["count"] == 2


def test_vizwiz_upload_and_val_score(tmp_path):
    root = layouts.vizwiz(tmp_path / "vizwiz")
    out = tmp_path / "out"
    evaluate(ScriptedEngine(default="Unanswerable."), "vizwiz", root, out_dir=out, label="m", progress=False)
    assert json.loads((out / "answers_upload/m.json").read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"}]
    val = evaluate(ScriptedEngine(default="soup"), "vizwiz", root, question_file="val.json", progress=False)
    assert val.scores["accuracy"] == pytest.approx(100)  # 4 of 10 annotators: every leave-one-out subset has >= 3


def test_gqa_predictions_file_and_accuracy(tmp_path):
    engine = ScriptedEngine({"indoors": "No.", "shirt": "The man", "cup": "Left"})
    out = tmp_path / "out"
    result = evaluate(engine, "gqa", layouts.gqa(tmp_path / "gqa"), out_dir=out, progress=False)
    assert json.loads((out / "testdev_balanced_predictions.json").read_text()) == [
        {"questionId": "201307251", "prediction": "no"},
        {"questionId": "201640614", "prediction": "the man"},
        {"questionId": "20968379", "prediction": "left"},
    ]
    assert result.scores["accuracy"] == pytest.approx(200 / 3)
    assert result.scores["binary"] == pytest.approx(100) and result.scores["open"] == pytest.approx(50)


def test_mmbench_xlsx_has_the_converter_columns(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    out = tmp_path / "out"
    result = evaluate(ScriptedEngine({"largest": "B", "shown": "C"}), "mmbench", layouts.mmbench(tmp_path / "mmb"),
                      out_dir=out, label="m", progress=False)
    assert result.scores["accuracy"] == pytest.approx(50)
    records = _lines(out / "merge.jsonl")
    assert records[0]["option_char"] == ["A", "B", "C"] and records[0]["round_id"] == 0
    sheet = openpyxl.load_workbook(out / "answers_upload/m.xlsx").active
    rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert rows[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert rows[1] == [241, "Which is the largest?", "circle", "square", "star", None, "B", "B", "dev"]
    assert rows[2] == [242, "What is shown?", "a cat", "a dog", None, "a bird", "C", "A", "dev"]


def test_mmvet_results_file(tmp_path):
    out = tmp_path / "out"
    result = evaluate(ScriptedEngine(default="x is 3"), "mmvet", layouts.mmvet(tmp_path / "mm-vet"), out_dir=out,
                      label="m", progress=False)
    assert result.scores is None
    assert json.loads((out / "results/m.json").read_text()) == {"v1_0": "x is 3"}


def test_synth_exact_match_per_question_type(tmp_path):
    engine = ScriptedEngine({"color": "Red.", "red square": "no", "circles": "2"})
    result = evaluate(engine, "synth", layouts.synth(tmp_path / "synth"), progress=False)
    assert result.scores["accuracy"] == pytest.approx(200 / 3)
    assert result.scores["by_question_type"] == {"color": 100.0, "count": 100.0, "exist": 0.0}


class _AspectEngine(ScriptedEngine):
    """Records the engine's preprocessing mode at each prepare_image (what the runner switches)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from edge_vlm.imaging import ImageConfig

        self.image_config = ImageConfig(image_size=56, aspect="pad")
        self.aspects: list[str] = []

    def prepare_image(self, image):
        self.aspects.append(self.image_config.aspect)
        return super().prepare_image(image)


def test_sqa_is_preprocessed_without_padding_as_in_lp(tmp_path):
    data = layouts.sqa(tmp_path / "sqa")
    engine = _AspectEngine(default="A")
    evaluate(engine, "sqa", data, progress=False)
    assert engine.aspects == ["square", "square"] and engine.image_config.aspect == "pad"  # restored
    kept = _AspectEngine(default="A")
    evaluate(kept, "sqa", data, aspect="model", progress=False)
    assert kept.aspects == ["pad", "pad"]
    pope = _AspectEngine()
    evaluate(pope, "pope", layouts.pope(tmp_path / "pope"), progress=False)
    assert set(pope.aspects) == {"pad"}


class _TooLongEngine(ScriptedEngine):
    def stream(self, prepared, question, history=None, config=None):
        from edge_vlm.errors import EdgeVLMError

        if "softest" in question:
            raise EdgeVLMError("the prompt is 900 tokens but the model's context is 512")
        yield from super().stream(prepared, question, history, config)


def test_a_question_that_cannot_be_asked_counts_as_wrong(tmp_path, capsys):
    out = tmp_path / "out"
    result = evaluate(_TooLongEngine(default="A"), "sqa", layouts.sqa(tmp_path / "sqa"), out_dir=out,
                      progress=False)
    assert result.scores["accuracy"] == pytest.approx(200 / 3)  # 11 and 13 right ('A'), 12 never asked
    failed = [r for r in _lines(out / "merge.jsonl") if r["metadata"]]
    assert [r["question_id"] for r in failed] == ["12"] and failed[0]["text"] == ""
    assert "could not be asked" in capsys.readouterr().err
