"""`edge-vlm eval` end to end on the tiny random checkpoint (checks the machinery, not answer quality)."""

from __future__ import annotations

import json
import sys

import pytest

from edge_vlm.cli.main import main
from tests.eval import layouts


def test_eval_end_to_end_on_the_tiny_checkpoint(cli, tiny_checkpoint, tmp_path, capsys):
    data = layouts.synth(tmp_path / "synth")
    out = tmp_path / "results"
    args = ["eval", "--model", str(tiny_checkpoint), "--benchmark", "synth", "--data", str(data), "--out", str(out),
            "--max-new-tokens", "4", "--no-progress"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "RANDOM weights" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # the last line is JSON
    assert summary["benchmarks"]["synth"]["tiny"]["metric"] == "accuracy"
    run_dir = out / "tiny" / "synth"
    answers = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]
    assert sorted(a["question_id"] for a in answers) == ["eval-0", "eval-1", "eval-2"]
    assert all(isinstance(a["text"], str) and a["model_id"] == "tiny" for a in answers)
    scores = json.loads((run_dir / "scores.json").read_text())
    assert scores["asked"] == 3 and scores["images_prepared"] == 2 and scores["scores"]["count"] == 3

    # the rerun (in this process) answers nothing and reports the same scores
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "0 answered now, 3 from an earlier run" in printed
    assert json.loads(printed.strip().splitlines()[-1]) == summary


def test_compare_two_checkpoints_and_score_an_answer_file(tiny_checkpoint, tmp_path, capsys):
    data = layouts.synth(tmp_path / "synth")
    out = tmp_path / "results"
    code = main(["eval", "--compare", str(tiny_checkpoint), str(tiny_checkpoint), "--benchmark", "synth",
                 "--data", str(data), "--out", str(out), "--max-new-tokens", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tiny-2 |" in printed and (out / "compare-synth.md").is_file()
    comparison = json.loads((out / "compare-synth.json").read_text())
    assert comparison["benchmarks"]["synth"]["tiny-2"]["delta"] == 0  # the same weights: no difference

    answers = out / "tiny" / "synth" / "merge.jsonl"
    assert main(["eval", "--answers", str(answers), "--benchmark", "synth", "--data", str(data),
                 "--out", str(tmp_path / "scored")]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rescored["benchmarks"]["synth"]["merge"]["score"] == comparison["benchmarks"]["synth"]["tiny"]["score"]


def test_list_and_user_errors(tmp_path, capsys):
    assert main(["eval", "--list"]) == 0
    assert "llava_pope_test.jsonl" in capsys.readouterr().out
    assert main(["eval", "--model", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "--benchmark is required" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--benchmark", "pope", "--data", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--benchmark", "synth", "--data", str(layouts.synth(tmp_path / "s"))]) == 2
    assert "config.json" in capsys.readouterr().err  # not a checkpoint
    assert main(["eval", "--compare", str(tmp_path), "--benchmark", "synth", "--data", str(tmp_path / "s")]) == 2
    assert "at least two" in capsys.readouterr().err


def test_bundle_without_the_runtime_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "edge_vlm.runtime", None)  # import edge_vlm.runtime now raises ImportError
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    code = main(["eval", "--bundle", str(bundle), "--benchmark", "synth", "--data", str(layouts.synth(tmp_path / "s"))])
    assert code == 2
    err = capsys.readouterr().err
    assert "edge_vlm.runtime" in err and "--model" in err


@pytest.mark.parametrize("flag", ["--help"])
def test_help_is_instant_and_names_the_benchmarks(cli, flag):
    done = cli("eval", flag)
    assert done.returncode == 0 and "mmbench" in done.stdout and "--compare" in done.stdout
