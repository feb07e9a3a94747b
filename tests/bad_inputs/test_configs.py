"""Damaged or wrong training plans and evaluation inputs: each refused in one line naming the file and what is wrong,
before any model is loaded, with nothing written.

Every input is written by the test. The training cases need no real model or data: they are refused before either
is read (a plan's files are only checked to exist), which keeps each case well under a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Importing the model code makes torch create its inductor cache folder in the temp folder; imported here, that
# happens before the harness starts watching the temp folder (a run that gets as far as the model imports it).
import edge_vlm.model.modeling  # noqa: F401

SYS_DIR = Path("/sys/edge-vlm-test")  # sysfs refuses new folders even to root: an output folder nobody can create


@pytest.fixture
def setup(tmp_path):
    """A plan that is valid up to its values: an init_from folder, a data file and an output folder that exist."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "data.json").write_text("[]")
    return tmp_path


def base_plan(root: Path, **values) -> str:
    keys = {"init_from": str(root / "ckpt"), "data_path": str(root / "data.json"), "output_dir": str(root / "run"),
            "global_batch_size": 8, "per_device_batch_size": 4, "max_steps": 2, "lr": "1.0e-3", **values}
    return "".join(f"{key}: {value}\n" for key, value in keys.items() if value is not None)


def write(root: Path, data: str | bytes, name: str = "plan.yaml") -> Path:
    path = root / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ------------------------------------------------------------------------------------------ the file itself
@pytest.mark.parametrize("data, match", [
    (bytes(range(256)) * 4, "is a binary file, not YAML text"),
    ("init_from: x\ndata_path: caf\u00e9.json\n".encode("latin-1"), "plan.yaml:2: the config file is not UTF-8 text"),
    # hand-counted: line 3 is "lr: a: b", its second ':' is column 6
    ("init_from: x\ndata_path: y\nlr: a: b\n", "plan.yaml:3:6: mapping values are not allowed here"),
    ("init_from: x\nstages:\n  - {name: a\n", "plan.yaml:4:1: "),
    ("- init_from: x\n- data_path: y\n", "must be a mapping of keys at the top level, got list"),
    ("init_from: x\nlr: 1.0e-3\nlr: 2.0e-3\n", "plan.yaml:3:1: key 'lr' is given twice (first at line 2)"),
    ("init_from: x\ndata_path: \x1b[0m\n", "plan.yaml:2:12: character #x001b is not allowed"),
])
def test_a_plan_that_is_not_yaml_text(refused, setup, data, match):
    refused("train", "--config", write(setup, data), match=match, watch=[setup])


def test_a_missing_plan_or_a_folder(refused, setup):
    refused("train", "--config", setup / "nope.yaml", match="config file not found", watch=[setup])
    refused("train", "--config", setup, match="is not a regular file", watch=[setup])


# ------------------------------------------------------------------------------------------ its values
@pytest.mark.parametrize("values, match", [
    ({"lr": ".nan"}, "plan.yaml:7:5: lr: .nan is not a finite number"),
    ({"lr": ".inf"}, "plan.yaml:7:5: lr: .inf is not a finite number"),
    ({"lr": "-1"}, "lr must be a finite number > 0, got -1.0"),
    ({"lr": "abc"}, "lr: 'abc' is not a valid float"),
    ({"lr": "'nan'"}, "lr must be a finite number > 0, got nan"),  # a string that float() reads as NaN
    ({"lr": "1e999"}, "lr must be a finite number > 0, got inf"),  # YAML 1.1 reads 1e999 as a string
    ({"global_batch_size": 0}, "global_batch_size must be an integer >= 1, got 0"),
    ({"per_device_batch_size": 0}, "per_device_batch_size must be an integer >= 1, got 0"),
    ({"max_steps": 2.5}, "max_steps: 2.5 is not a valid int"),
    ({"warmup_ratio": 1.5}, "warmup_ratio must be a number in [0, 1), got 1.5"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
    ({"seed": -1}, "seed must be an integer in [0, 4294967295], got -1"),
    ({"betas": "[0.9, .nan]"}, "plan.yaml:8:14: .nan is not a finite number"),
    ({"learning_rate": "1.0e-3"}, "unknown key 'learning_rate'"),
])
def test_bad_values_name_the_file_and_the_key(refused, setup, values, match):
    plan = write(setup, base_plan(setup, **values))
    outcome = refused("train", "--config", plan, match=match, watch=[setup])
    assert str(plan) in outcome.stderr


@pytest.mark.parametrize("argv, match", [
    (["--lr", "nan"], "lr must be a finite number > 0, got nan (given on the command line)"),
    (["--lr=-.inf"], "lr must be a finite number > 0, got -inf (given on the command line)"),
    (["--per_device_batch_size", "0"], "per_device_batch_size must be an integer >= 1, got 0 (given on the command"),
    (["--eval-limit", "0"], "--eval-limit must be >= 1"),
])
def test_bad_values_on_the_command_line(refused, setup, argv, match):
    refused("train", "--config", write(setup, base_plan(setup)), *argv, match=match, watch=[setup])


def test_bad_values_in_a_plan_of_stages(refused, setup):
    plan = base_plan(setup, init_from=None, data_path=None) + (
        f"model_preset: tiny\ntokenizer_vocab_size: 300\ndata_path: {setup / 'data.json'}\nstages:\n"
        "  - {name: one, stage: pretrain}\n  - {name: two, stage: finetune}\n")
    path = write(setup, plan)
    refused("train", "--config", path, "--set", "two.lr=-1", match="[two]: lr must be a finite number > 0",
            watch=[setup])
    refused("train", "--config", write(setup, plan.replace("name: two", "name: ../../escape")),
            match="stage name '../../escape' must be a plain folder name", watch=[setup])


@pytest.mark.parametrize("step, match", [
    ("synth: {out: world, colours: 3}", "unknown synth key(s) ['colours']"),
    ("synth: {out: world, train: many}", "synth train must be an integer >= 0, got 'many'"),
    ("vision_pretrain: {data_path: d.json, output_dir: v, lr: -1}", "vision_pretrain lr must be a finite number > 0"),
    ("vision_pretrain: {data_path: d.json, output_dir: v, steps: 0}", "vision_pretrain steps must be an integer >= 1"),
    ("evaluate: {eval_file: e.json, limit: 0}", "evaluate limit must be an integer >= 1"),
    ("evaluate: {limit: 5}", "evaluate needs eval_file"),
])
def test_bad_plan_steps(refused, setup, step, match):
    refused("train", "--config", write(setup, base_plan(setup) + step + "\n"), match=match, watch=[setup])


# ------------------------------------------------------------------------------------------ its paths
def test_missing_inputs_are_refused_before_any_model_is_loaded(refused, setup):
    refused("train", "--config", write(setup, base_plan(setup, data_path=setup / "missing.json")),
            match=f"data_path {setup / 'missing.json'}: not found", watch=[setup])
    refused("train", "--config", write(setup, base_plan(setup, init_from=setup / "no-ckpt")),
            match=f"init_from (a checkpoint folder) {setup / 'no-ckpt'}: not found", watch=[setup])
    refused("train", "--config", write(setup, base_plan(setup, init_from=setup / "data.json")),
            match="init_from (a checkpoint folder)", watch=[setup])
    refused("train", "--config", write(setup, base_plan(setup) + "evaluate: {eval_file: nowhere.json}\n"),
            match="evaluate eval_file nowhere.json: not found", watch=[setup])


def test_an_output_folder_that_cannot_be_written(refused, setup):
    (setup / "a-file").write_text("mine")
    refused("train", "--config", write(setup, base_plan(setup, output_dir=setup / "a-file" / "run")),
            match="a-file is a file, not a folder", watch=[setup])
    refused("train", "--config", write(setup, base_plan(setup, output_dir=SYS_DIR / "run")),
            match=f"cannot create the training run {SYS_DIR / 'run'}", watch=[setup])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder whatever its mode; the /sys case of "
                                              "test_an_output_folder_that_cannot_be_written covers this as root")
def test_a_read_only_output_folder(refused, setup):
    locked = setup / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused("train", "--config", write(setup, base_plan(setup, output_dir=locked / "run")),
                match="is not writable", watch=[setup])
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------------------------------ eval inputs
@pytest.fixture
def synth_data(tmp_path):
    """A two-question synthetic-world eval folder (eval.json + its pictures)."""
    from PIL import Image

    data = tmp_path / "synth"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "white").save(data / "images" / "a.png")
    records = [{"id": f"q{i}", "image": "images/a.png", "question_type": "color", "answer": "red",
                "conversations": [{"from": "human", "value": "<image>\nWhat color?"},
                                  {"from": "gpt", "value": "red"}]} for i in range(2)]
    (data / "eval.json").write_text(json.dumps(records))
    return data


@pytest.mark.parametrize("answers, match", [
    (bytes(range(256)), "answers file {path} is a binary file, not JSON text"),
    ("caf\u00e9".encode("latin-1"), "{path}:1: the answers file is not UTF-8 text"),
    ('[{"question_id": "q0", "text": "red"}]\n', "{path}:1: expected a JSON object per line, got list"),
    ('{"question_id": "q0", "text": "red"}\n{"question_id": "q1", "text": \n', "{path}:2:31: Expecting value"),  # hand-counted: line 2 ends at column 30
    ('{"question_id": "q0", "text": NaN}\n', "{path}:1:31: NaN is not a JSON value"),  # hand-counted: N is column 31
    ('{"question_id": "q0", "text": 5}\n', "answer record 1 has a 'text' that is not a string (int)"),
    ('{"question_id": "elsewhere", "text": "red"}\n', "no answer in {path} matches a question"),
])
def test_a_bad_answers_file(refused, synth_data, tmp_path, answers, match):
    path = write(tmp_path, answers, "answers.jsonl")
    refused("eval", "--answers", path, "--benchmark", "synth", "--data", synth_data, "--out", tmp_path / "out",
            match=match.format(path=path), watch=[tmp_path])


@pytest.mark.parametrize("questions, match", [
    ("[{\"id\": \"q0\", \"conversations\": [{\"value\": \"caf\u00e9\"}]}]".encode("latin-1"),
     "{path}:1: the JSON file is not UTF-8 text"),
    (b'{"id": "q0"}', "{path}: expected a LLaVA JSON list of records"),
    (b'["q0", "q1"]', "{path}: record 1 needs 'id' and a human turn"),
    (b'[{"id": "q0", "conversations": [{"value": 7}]}]', "{path}: not a Synthetic world question file"),
    (b'[{"id": "q0", "image": 3, "conversations": [{"value": "hi"}]}]', "{path}: not a Synthetic world question file"),
])
def test_a_bad_question_file(refused, synth_data, tmp_path, questions, match):
    path = write(tmp_path, questions, "questions.json")
    answers = write(tmp_path, '{"question_id": "q0", "text": "red"}\n', "answers.jsonl")
    refused("eval", "--answers", answers, "--benchmark", "synth", "--data", synth_data, "--question-file", path,
            "--out", tmp_path / "out", match=match.format(path=path), watch=[tmp_path])


def test_bad_eval_sources_and_outputs(refused, synth_data, tmp_path, tiny_checkpoint):
    refused("eval", "--compare", tmp_path / "missing", tiny_checkpoint, "--benchmark", "synth", "--data", synth_data,
            match=f"{tmp_path / 'missing'} is not a directory", watch=[tmp_path])
    (tmp_path / "a-file").write_text("mine")
    refused("eval", "--model", tiny_checkpoint, "--benchmark", "synth", "--data", synth_data,
            "--out", tmp_path / "a-file" / "results", match="a-file is a file, not a folder", watch=[tmp_path])
    refused("eval", "--model", tiny_checkpoint, "--benchmark", "synth", "--data", synth_data, "--out", SYS_DIR,
            match=f"cannot create the answers folder {SYS_DIR}", watch=[tmp_path])
    answers = write(tmp_path, '{"question_id": "q0", "text": "red"}\n', "answers.jsonl")
    refused("eval", "--answers", answers, "--benchmark", "synth", "--data", synth_data,
            "--out", tmp_path / "a-file", match="a-file is a file, not a folder", watch=[tmp_path])
    refused("eval", "--model", tiny_checkpoint, "--benchmark", "synth", "--data", synth_data, "--limit", "0",
            match="--limit must be >= 1", watch=[tmp_path])


@pytest.mark.parametrize("corpus, match", [
    ("[{\"conversations\": [{\"value\": \"caf\u00e9\"}]}]".encode("latin-1"), "the tokenizer_corpus file is not UTF-8"),
    (b'{"conversations": []}', "a tokenizer_corpus file is LLaVA or ShareGPT JSON"),
])
def test_a_bad_tokenizer_corpus(refused, setup, corpus, match):
    # read when the tokenizer is trained, at the start of the run: the run folder is probed there, so only the
    # inputs are watched, and the run folder must not be left behind
    inputs = setup / "inputs"
    inputs.mkdir()
    path = write(inputs, corpus, "corpus.json")
    plan = base_plan(setup, init_from=None) + f"model_preset: tiny\ntokenizer_vocab_size: 300\ntokenizer_corpus: [{path}]\n"
    refused("train", "--config", write(inputs, plan), match=match, watch=[inputs])
    assert not (setup / "run").exists()
