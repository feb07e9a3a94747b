"""Output FILES never replace a user's file: `bench --json/--markdown/--plot/--profile`, `stream --jsonl/--record`,
`eval` (the comparison files, a results folder that is not ours), `demo --out`.

A named output may be written when it does not exist, is empty, or is recognisably one edge-vlm wrote earlier;
anything else (a user's notes, picture, JSON, video, a folder) is refused in one line before any slow work and left
byte for byte as it was. An earlier edge-vlm output is replaced by the same command run again, and the results
checked in under benchmarks/ stay replaceable by the commands recorded beside them. Also: `eval --compare` checks
every source before it evaluates the first.

Every user file is generated here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from tests.bad_inputs.test_checkpoints import synth_data

REPO = Path(__file__).resolve().parents[2]
NOT_OURS = "exists and was not written by edge-vlm: choose another path or remove it first"


def user_png(path: Path, **text) -> Path:
    """A user's picture; `text` becomes PNG text chunks (e.g. another program's Software and Title)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.new("RGB", (16, 12), (10, 200, 30)).save(path, pnginfo=info)
    return path


# What a user may have at an output's path: (file name, how to make it). Each is refused and kept.
USER_FILES = {
    "notes": ("notes.txt", lambda p: p.write_text("my notes, not a report\n")),
    "other JSON": ("report.json", lambda p: p.write_text(json.dumps({"schema": "someone-else", "rows": [1, 2]}))),
    "JSON list": ("list.json", lambda p: p.write_text("[1, 2, 3]\n")),
    "markdown about bench": ("bench.md", lambda p: p.write_text("# edge-vlm bench notes\n\nCommand:\n\nmine\n")),
    "user PNG": ("photo.png", lambda p: user_png(p)),
    "matplotlib PNG": ("chart.png", lambda p: user_png(p, Software="Matplotlib version3.10.0, https://matplotlib.org/",
                                                       Title="my own chart")),
    "JSONL of records": ("data.jsonl", lambda p: p.write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n')),
    "binary": ("blob.bin", lambda p: p.write_bytes(bytes(range(256)) * 4)),
}


def make_user_file(tmp_path: Path, kind: str) -> tuple[Path, bytes]:
    name, make = USER_FILES[kind]
    path = tmp_path / "mine" / name
    path.parent.mkdir(exist_ok=True)
    make(path)
    return path, path.read_bytes()


# ---------------------------------------------------------------------------------------------------------- bench
def bench_argv(checkpoint) -> list:
    return ["bench", "--model", checkpoint, "--backend", "torch-fp32", "--quiet", "--prompt-tokens", "72",
            "--new-tokens", "2", "--runs", "1", "--warmup", "0", "--threads", "1", "--bandwidth-mib", "8"]


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--plot"])
@pytest.mark.parametrize("kind", ["notes", "other JSON", "JSON list", "markdown about bench", "user PNG",
                                  "matplotlib PNG", "binary"])
def test_bench_never_replaces_a_users_file(refused, tiny_checkpoint, tmp_path, flag, kind):
    path, before = make_user_file(tmp_path, kind)
    outcome = refused(*bench_argv(tiny_checkpoint), flag, path, match=f"{path} {NOT_OURS}", watch=[tmp_path])
    assert path.read_bytes() == before
    assert "measur" not in outcome.stdout  # refused before any backend ran: no table


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--plot"])
def test_bench_refuses_a_folder_in_place_of_the_file(refused, tiny_checkpoint, tmp_path, flag):
    folder = tmp_path / "out.png"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    refused(*bench_argv(tiny_checkpoint), flag, folder, match=f"{flag} {folder} is a folder", watch=[tmp_path])


def test_bench_profile_is_a_folder_never_a_users_file(refused, tiny_checkpoint, tmp_path):
    path, before = make_user_file(tmp_path, "notes")
    refused(*bench_argv(tiny_checkpoint), "--profile", path, match=f"--profile {path} is a file", watch=[tmp_path])
    assert path.read_bytes() == before


@pytest.mark.parametrize("flag, kind", [("--markdown", "notes"), ("--plot", "user PNG")])
def test_bench_render_never_replaces_a_users_file(refused, tmp_path, flag, kind):
    report = shutil.copy(REPO / "benchmarks/results/cpu-2core-quiet-fp32-llava-phi-2-random.json", tmp_path)
    path, before = make_user_file(tmp_path, kind)
    refused("bench", "render", report, flag, path, match=f"{path} {NOT_OURS}", watch=[tmp_path])
    assert path.read_bytes() == before


def test_bench_replaces_its_own_earlier_outputs(refused, tiny_checkpoint, tmp_path):
    """Outputs of an earlier edge-vlm (the checked-in results: a matplotlib PNG without our Software chunk) are
    replaced by a run; that run's outputs are replaced again by `bench render`."""
    results = REPO / "benchmarks/results"
    out = {suffix: tmp_path / f"out.{suffix}" for suffix in ("json", "md", "png")}
    for suffix, path in out.items():
        shutil.copy(results / f"cpu-2core-quiet-fp32-llava-phi-2-random.{suffix}", path)
    old = {suffix: path.read_bytes() for suffix, path in out.items()}
    outcome = refused.run(*bench_argv(tiny_checkpoint), "--json", out["json"], "--markdown", out["md"],
                          "--plot", out["png"])
    assert outcome.code == 0, outcome.stderr
    assert all(path.read_bytes() != old[suffix] for suffix, path in out.items())
    report = json.loads(out["json"].read_text())
    assert report["schema"] == "edge-vlm-bench" and report["settings"]["backends"] == ["torch-fp32"]
    assert out["md"].read_text().splitlines()[0] == "# edge-vlm bench — RANDOM WEIGHTS"
    with Image.open(out["png"]) as image:
        assert image.info["Software"] == "edge-vlm bench"
    first = out["png"].read_bytes()
    out["md"].write_text("")  # an empty file is replaced too
    again = refused.run("bench", "render", out["json"], "--markdown", out["md"], "--plot", out["png"])
    assert again.code == 0, again.stderr
    assert out["md"].read_text().startswith("# edge-vlm bench") and out["png"].read_bytes()[:8] == first[:8]


# The results the recorded commands in benchmarks/README.md and benchmarks/eval/README.md rewrite with an edge-vlm
# output flag (benchmarks/stream and benchmarks/serve results are written by shell redirection and bench.py).
CHECKED_IN = sorted([*(REPO / "benchmarks/results").glob("*.*"), *(REPO / "benchmarks/eval/results").glob("*.*")])


@pytest.mark.parametrize("path", CHECKED_IN, ids=lambda p: str(p.relative_to(REPO)))
def test_checked_in_results_are_recognised_as_ours(path):
    from edge_vlm.bench.plot import is_plot
    from edge_vlm.bench.report import is_report_json, is_report_markdown
    from edge_vlm.eval.compare import is_comparison_json, is_comparison_markdown

    if path.parent.parent.name == "eval":
        assert {".md": is_comparison_markdown, ".json": is_comparison_json}[path.suffix](path)
    else:
        assert {".md": is_report_markdown, ".json": is_report_json, ".png": is_plot}[path.suffix](path)


def test_checked_in_eval_results_folders_are_ours():
    from edge_vlm.eval.runner import is_results_folder

    folders = sorted((REPO / "benchmarks/eval/results").glob("*/*/"))
    assert len(folders) == 4
    assert all(is_results_folder(folder) for folder in folders)


# --------------------------------------------------------------------------------------------------------- stream
def stream_argv(checkpoint, *extra) -> list:
    return ["stream", "--model", checkpoint, "--source", "synthetic", "--prompt", "What is it?",
            "--max-new-tokens", "2", "--max-frames", "2", "--quiet", *extra]


@pytest.mark.parametrize("kind", ["notes", "JSONL of records", "other JSON", "binary"])
def test_stream_jsonl_never_replaces_a_users_file(refused, tiny_checkpoint, tmp_path, kind):
    path, before = make_user_file(tmp_path, kind)
    refused(*stream_argv(tiny_checkpoint, "--jsonl", path), match=f"{path} {NOT_OURS}", watch=[tmp_path])
    assert path.read_bytes() == before


def test_stream_never_replaces_an_existing_video(refused, tiny_checkpoint, tmp_path):
    """OpenCV cannot tag a recording, so no video can be told to be ours: only an empty file is replaced."""
    video = tmp_path / "holiday.avi"
    video.write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(200))
    before = video.read_bytes()
    refused(*stream_argv(tiny_checkpoint, "--record", video), match=f"{video} exists and a video is never replaced",
            watch=[tmp_path])
    assert video.read_bytes() == before


@pytest.mark.parametrize("flag, name", [("--jsonl", "answers.jsonl"), ("--record", "run.avi")])
def test_stream_refuses_a_folder_in_place_of_the_file(refused, tiny_checkpoint, tmp_path, flag, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "keep.txt").write_text("mine")
    refused(*stream_argv(tiny_checkpoint, flag, tmp_path / name), match=f"{tmp_path / name} is a directory",
            watch=[tmp_path])


def test_stream_replaces_its_own_earlier_outputs(refused, tiny_checkpoint, tmp_path):
    jsonl, video = tmp_path / "answers.jsonl", tmp_path / "run.avi"
    jsonl.write_text("")  # empty files (e.g. from `touch`) are written into
    video.write_bytes(b"")
    first = refused.run(*stream_argv(tiny_checkpoint, "--jsonl", jsonl, "--record", video))
    assert first.code == 0, first.stderr
    assert len(jsonl.read_text().splitlines()) == 2 and video.read_bytes()[:4] == b"RIFF"
    earlier = jsonl.read_text()
    again = refused.run(*stream_argv(tiny_checkpoint, "--jsonl", jsonl))
    assert again.code == 0, again.stderr
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 2 and jsonl.read_text() != earlier  # replaced (new capture times), not appended
    assert all(json.loads(line)["frame_seq"] >= 0 for line in lines)


# ----------------------------------------------------------------------------------------------------------- eval
@pytest.fixture
def synth(tmp_path):
    """The smallest `synth` benchmark folder: eval.json with one question and its picture."""
    return synth_data(tmp_path / "synth")


def eval_compare_argv(sources, synth, out) -> list:
    return ["eval", "--compare", *sources, "--benchmark", "synth", "--data", synth, "--out", out, "--no-progress",
            "--max-new-tokens", "2"]


def damaged_checkpoint(tiny_checkpoint, tmp_path) -> Path:
    copy = Path(shutil.copytree(tiny_checkpoint, tmp_path / "damaged"))
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    return copy


def damaged_bundle(tiny_checkpoint, tmp_path) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"format": "edge-vlm-bundle", ')  # cut short
    return folder


@pytest.mark.parametrize("damage, match", [(damaged_checkpoint, "not a complete safetensors file"),
                                           (damaged_bundle, "manifest.json is not valid JSON")])
def test_eval_compare_checks_every_source_first(refused, tiny_checkpoint, synth, tmp_path, damage, match):
    """The damaged source comes second: nothing is evaluated, no result is written for the first."""
    damaged = damage(tiny_checkpoint, tmp_path)
    out = tmp_path / "results"
    # (the parent of --out is not watched: proving --out writable creates and removes it, which touches its mtime)
    outcome = refused(*eval_compare_argv([tiny_checkpoint, damaged], synth, out), match=match,
                      watch=[damaged, synth, tiny_checkpoint])
    assert str(damaged) in outcome.stderr
    assert not out.exists()


@pytest.mark.parametrize("name, kind", [("compare-synth.md", "notes"), ("compare-synth.md", "markdown about bench"),
                                        ("compare-synth.json", "other JSON"), ("compare-synth.json", "notes")])
def test_eval_compare_never_replaces_a_users_file(refused, tiny_checkpoint, synth, tmp_path, name, kind):
    path, before = make_user_file(tmp_path, kind)
    out = path.parent
    path = path.rename(out / name)
    refused(*eval_compare_argv([tiny_checkpoint, tiny_checkpoint], synth, out), match=f"{path} {NOT_OURS}",
            watch=[tmp_path])
    assert path.read_bytes() == before


def test_eval_compare_refuses_a_folder_in_place_of_its_table(refused, tiny_checkpoint, synth, tmp_path):
    out = tmp_path / "results"
    (out / "compare-synth.md").mkdir(parents=True)
    refused(*eval_compare_argv([tiny_checkpoint, tiny_checkpoint], synth, out),
            match=f"{out / 'compare-synth.md'} is a folder", watch=[tmp_path])


def test_eval_never_writes_into_a_users_folder(refused, tiny_checkpoint, synth, tmp_path):
    """OUT/<source>/<benchmark>/ that edge-vlm did not write (no run.json / scores.json of ours) is left alone."""
    out = tmp_path / "results"
    folder = out / tiny_checkpoint.name / "synth"
    folder.mkdir(parents=True)
    (folder / "scores.json").write_text('{"my": "scores"}')
    refused("eval", "--model", tiny_checkpoint, "--benchmark", "synth", "--data", synth, "--out", out,
            "--no-progress", match=f"{folder} {NOT_OURS.replace('path', '--out')}", watch=[tmp_path])


def test_eval_answers_never_writes_into_a_users_folder(refused, synth, tmp_path):
    """`--answers mine/answers.jsonl` files its scores under OUT/answers/synth/: a user's folder there is kept."""
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": "eval-0", "prompt": "What color is the square?", "text": "red"})
                       + "\n")
    folder = tmp_path / "answers" / "synth"
    folder.mkdir(parents=True)
    (folder / "scores.json").write_text("my own scores\n")
    refused("eval", "--answers", answers, "--benchmark", "synth", "--data", synth, "--out", tmp_path,
            match=f"{folder} exists and was not written by edge-vlm", watch=[tmp_path])


def test_eval_compare_replaces_its_own_earlier_outputs(refused, tiny_checkpoint, synth, tmp_path):
    out = tmp_path / "results"
    argv = eval_compare_argv([tiny_checkpoint, tiny_checkpoint], synth, out)
    first = refused.run(*argv)
    assert first.code == 0, first.stderr
    table = out / "compare-synth.md"
    assert table.read_text().startswith("| source | synth accuracy | Δ |")
    table.write_text(table.read_text() + "\nold\n")
    again = refused.run(*argv)
    assert again.code == 0, again.stderr
    assert "old" not in table.read_text()
    assert set(json.loads((out / "compare-synth.json").read_text())["benchmarks"]["synth"]) == {
        tiny_checkpoint.name, f"{tiny_checkpoint.name}-2"}


# ----------------------------------------------------------------------------------------------------------- demo
@pytest.mark.parametrize("kind", ["user PNG", "matplotlib PNG", "notes"])
def test_demo_never_replaces_a_users_file(refused, tmp_path, kind):
    path, before = make_user_file(tmp_path, kind)
    refused("demo", "--n", "1", "--out", path, match=f"{path} {NOT_OURS}", watch=[tmp_path])
    assert path.read_bytes() == before


def test_demo_refuses_a_folder_in_place_of_the_file(refused, tmp_path):
    (tmp_path / "sheet.png").mkdir()
    refused("demo", "--n", "1", "--out", tmp_path / "sheet.png", match="is a folder", watch=[tmp_path])


def test_demo_replaces_its_own_contact_sheet(refused, tmp_path):
    sheet = tmp_path / "sheet.png"
    first = refused.run("demo", "--n", "1", "--out", sheet)
    assert first.code == 0, first.stderr
    with Image.open(sheet) as image:
        assert image.info["Software"] == "edge-vlm demo"
    again = refused.run("demo", "--n", "1", "--seed", "5", "--out", sheet)
    assert again.code == 0, again.stderr
