"""Output FILES never replace a user's file: `bench --json/--markdown/--plot/--profile`, `stream --jsonl/--record`,
`eval` (the comparison files, a results folder that is not ours), `demo --out`. Output FOLDERS (`data synth`,
`export`, `convert` with --force) replace an earlier output only when nothing in it is the user's, never the current
folder; every output gets the modes a plain mkdir / open() would give under the umask.

A named output may be written when it does not exist, is empty, or is recognisably one edge-vlm wrote earlier;
anything else (a user's notes, picture, JSON, video, a folder) is refused in one line before any slow work and left
byte for byte as it was. An earlier edge-vlm output is replaced by the same command run again, and the results
checked in under benchmarks/ stay replaceable by the commands recorded beside them. Also: `eval --compare` checks
every source before it evaluates the first.

Every user file is generated here.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from tests.bad_inputs.conftest import snapshot
from tests.bad_inputs.test_checkpoints import release, synth_data  # noqa: F401 - release is a fixture

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


# ------------------------------------------------------------------------ --force over an earlier output folder
BUILTIN = REPO / "edge_vlm" / "assets" / "builtin"
FOREIGN = "which edge-vlm did not write"

# What a user may have saved into an earlier output folder: (path inside it, the entry the refusal names, how to
# make it).
SAVED_INSIDE = {
    "notes": ("notes.txt", "notes.txt", lambda p: p.write_text("my notes about this run\n")),
    "a picture among ours": ("images/holiday.png", "images/holiday.png", lambda p: user_png(p)),
    "a folder of drafts": ("drafts/todo.md", "drafts", lambda p: p.write_text("- compare with int4\n")),
    "a link named like ours": ("eval.json", "eval.json", lambda p: p.symlink_to("/etc/hostname")),
}


def save_inside(folder: Path, kind: str) -> tuple[Path, Path]:
    """Save the user's file; returns (the file, the entry of `folder` a refusal names first)."""
    name, named, make = SAVED_INSIDE[kind]
    path = folder / name
    path.parent.mkdir(exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    make(path)
    return path, folder / named


@pytest.mark.parametrize("kind", list(SAVED_INSIDE))
def test_synth_force_keeps_what_the_user_saved_in_an_earlier_world(refused, tmp_path, kind):
    world = tmp_path / "world"
    argv = ["data", "synth", "--quiet", "--out", world, "--train", "2", "--eval", "1", "--force"]
    assert refused.run(*argv).code == 0
    saved, named = save_inside(world, kind)
    refused(*argv, "--seed", "3", match=f"{world} also holds {named}, {FOREIGN}", watch=[tmp_path])
    assert saved.is_symlink() or saved.exists()
    shutil.rmtree(named) if named.is_dir() else named.unlink()
    if kind == "a link named like ours":  # the world is now incomplete, yet still ours: replaced
        (world / "eval.json").write_text("[]")
    again = refused.run(*argv, "--seed", "3")
    assert again.code == 0, again.stderr
    assert json.loads((world / "world.json").read_text())["seed"] == 3


@pytest.mark.parametrize("kind", ["notes", "a folder of drafts", "a link named like ours"])
def test_convert_force_keeps_what_the_user_saved_in_an_earlier_checkpoint(refused, release, tmp_path,  # noqa: F811
                                                                           monkeypatch, kind):
    from edge_vlm.model import convert

    out = tmp_path / "out"
    assert refused.run("convert", release, out).code == 0
    saved, named = save_inside(out, kind)

    def slow(*_args):
        raise AssertionError("convert read the weights before refusing its output")

    monkeypatch.setattr(convert, "read_weights", slow)
    refused("convert", release, out, "--force", match=f"{out} also holds {named}, {FOREIGN}", watch=[tmp_path])
    assert saved.is_symlink() or saved.exists()


def test_a_checkpoint_saved_in_shards_is_ours(tmp_path):
    """transformers names shards model-00001-of-00002.safetensors, with model.safetensors.index.json."""
    from edge_vlm.fileio import check_replaceable
    from edge_vlm.model.checkpoint import is_checkpoint_dir

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "edge_vlm.json").write_text(json.dumps({"format": "edge-vlm-checkpoint"}))
    for name in ("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                 "preprocessor_config.json"):
        (folder / name).write_text("{}")
    assert check_replaceable(folder, True, is_checkpoint_dir, "checkpoint") == folder
    (folder / "special_tokens_map.json").write_text("{}")  # not a file edge-vlm writes
    with pytest.raises(Exception, match=f"holds {folder / 'special_tokens_map.json'}, {FOREIGN}"):
        check_replaceable(folder, True, is_checkpoint_dir, "checkpoint")


def earlier_bundle(folder: Path) -> Path:
    """A folder as an export leaves it, as far as --force looks: manifest.json (the bundle format) listing its
    files, one of them in a sub-folder and one with glob characters in its name."""
    listed = {"vision.onnx": b"graph", "decoder/model.onnx": b"graph", "decoder/model.onnx.data": b"w",
              "embeddings.npy": b"table", "tokenizer [v2].json": b"{}"}
    for name, data in listed.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = {"format": "edge-vlm-bundle", "schema_version": 1,
                "files": {name: {"bytes": len(data), "sha256": "0" * 64} for name, data in listed.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def stop_at_loading(monkeypatch):
    """export stops (one line, exit 2) where it would load the checkpoint: what comes before is the output check."""
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.export import pipeline

    def stop(*_args, **_kwargs):
        raise EdgeVLMError("stopped at loading (the test's stand-in)")

    monkeypatch.setattr(pipeline, "_load", stop)


@pytest.mark.parametrize("saved", ["NOTES.txt", "decoder/my-tuning.onnx", "tokenizer v2.json", "decoder/sub/x"])
def test_export_force_keeps_what_the_user_saved_in_an_earlier_bundle(refused, tmp_path, stop_at_loading, saved):
    bundle = earlier_bundle(tmp_path / "bundle")
    (bundle / saved).parent.mkdir(parents=True, exist_ok=True)
    (bundle / saved).write_text("the user's")
    first = bundle / Path(saved).parts[0] / Path(saved).parts[1] if saved == "decoder/sub/x" else bundle / saved
    refused("export", "--model", BUILTIN, "--out", bundle, "--force", match=f"also holds {first}, {FOREIGN}",
            watch=[tmp_path])


def test_export_force_gets_past_the_output_check_for_an_earlier_bundle(refused, tmp_path, stop_at_loading):
    bundle = earlier_bundle(tmp_path / "bundle")
    refused("export", "--model", BUILTIN, "--out", bundle, "--force", match="stopped at loading", watch=[bundle])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "tmp"]  # its temp folder is gone again


# ----------------------------------------------------------------- a folder output that cannot be renamed into place
@pytest.mark.parametrize("target", ["", ".", "..", "a/..", "the current folder by its path", "its parent by path"])
def test_atomic_dir_refuses_the_current_folder_or_one_above_it(tmp_path, monkeypatch, target):
    """A folder is replaced by renaming a temp folder onto it: refused up front in one line for a path with no name
    or the folder the command runs in (before: a traceback after all the work, and a `..tmp-*` folder left)."""
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.fileio import atomic_dir

    here = tmp_path / "world"
    (here / "a").mkdir(parents=True)
    (here / "world.json").write_text("{}")
    monkeypatch.chdir(here)
    target = {"the current folder by its path": str(here), "its parent by path": str(tmp_path)}.get(target, target)
    before = snapshot(tmp_path)
    with pytest.raises(EdgeVLMError) as refusal:
        with atomic_dir(target, force=True, replaceable=lambda _: True, what="synthetic world"):
            raise AssertionError("atomic_dir let the work start")
    assert "\n" not in str(refusal.value) and "current folder" in str(refusal.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dst", ["", "."])
def test_convert_into_the_current_folder_is_refused(refused, release, tmp_path, monkeypatch, dst):  # noqa: F811
    """convert has no check of its own for this: fileio's is the one that answers."""
    out = tmp_path / "out"
    assert refused.run("convert", release, out).code == 0
    monkeypatch.chdir(out)
    refused("convert", release, dst, "--force", match="current folder", watch=[tmp_path])


# ------------------------------------------------------------------------------------ modes: what mkdir/open give
@contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plain_modes(where: Path) -> tuple[int, int]:
    """The modes this umask gives a folder made by mkdir and a file made by open(): what every output must have."""
    folder, file = where / "plain-folder", where / "plain-file"
    folder.mkdir()
    with open(file, "w") as handle:
        handle.write("x")
    modes = mode(folder), mode(file)
    folder.rmdir()
    file.unlink()
    return modes


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_have_the_modes_mkdir_and_open_give(tmp_path, mask):
    from edge_vlm.data.synth import write_world
    from edge_vlm.fileio import atomic_write
    from edge_vlm.model.factory import write_random_checkpoint

    with umask(mask):
        folder_mode, file_mode = plain_modes(tmp_path)
        write_world(tmp_path / "world", train=2, eval_size=1, progress=False)
        world = tmp_path / "world"
        checkpoint = write_random_checkpoint("tiny", tmp_path / "checkpoint")
        report = atomic_write(tmp_path / "report.json", "{}\n")
    for path in [world, world / "images", checkpoint]:
        assert mode(path) == folder_mode, f"{path}: {oct(mode(path))}, mkdir gives {oct(folder_mode)}"
    files = [world / "world.json", *(world / "images").iterdir(), *checkpoint.iterdir(), report]
    assert checkpoint / "model.safetensors" in files
    for path in files:
        assert mode(path) == file_mode, f"{path}: {oct(mode(path))}, open() gives {oct(file_mode)}"


def test_rewriting_an_output_file_keeps_its_mode(tmp_path):
    """open(path, "w") on an existing file keeps its mode; so does rewriting a report (it used to turn 0644 into
    mkstemp's 0600)."""
    from edge_vlm.fileio import atomic_write

    report = tmp_path / "report.json"
    report.write_text("{}\n")
    report.chmod(0o644)
    with umask(0o077):
        atomic_write(report, "{}\n")
    assert mode(report) == 0o644
    report.chmod(0o640)
    with umask(0o022):
        atomic_write(report, "{}\n")
    assert mode(report) == 0o640


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_recognising_an_earlier_output_never_opens_a_fifo(refused, tiny_checkpoint, tmp_path):
    """A FIFO where an earlier output's marker file would be: opening it would wait for a writer forever."""
    world = tmp_path / "world"
    world.mkdir()
    os.mkfifo(world / "world.json")
    refused("data", "synth", "--quiet", "--out", world, "--train", "2", "--eval", "1", "--force",
            match="is a folder that is neither", isolated=True, timeout=60, watch=[tmp_path])
    os.mkfifo(tmp_path / "report.json")
    refused("bench", "--model", tiny_checkpoint, "--json", tmp_path / "report.json", match="not written by edge-vlm",
            isolated=True, timeout=60, watch=[tmp_path])
