"""Damaged bundles, hostile manifests and unwritable outputs for `export`, `ask --bundle`, `info` and `bench`: each
is refused in one line (exit 2) that names what is wrong, and nothing of the user's is changed.

One small INT4 bundle is exported per test session (tests/export/bundles.py) and copied into each test's folder
before it is damaged. Every damage is made here; the expected messages are the project's promises, the format
facts (which bytes make an ONNX graph, what a path outside a folder is) come from the files themselves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.export.conftest import export_base, exportable_tiny, int4_bundle  # noqa: F401

# ------------------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def bundle(int4_bundle, tmp_path):  # noqa: F811
    """A private copy of the session's INT4 bundle, to damage."""
    return Path(shutil.copytree(int4_bundle, tmp_path / "bundle"))


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rehash(bundle: Path, name: str) -> None:
    """Record a changed file's new size and sha256 (hashlib here, not the code under test), so only the file's
    contents, not the integrity check, can refuse it."""
    import hashlib

    data = (bundle / name).read_bytes()
    edit_manifest(bundle, lambda m: m["files"].__setitem__(name, {"bytes": len(data),
                                                                  "sha256": hashlib.sha256(data).hexdigest()}))


# ------------------------------------------------------------------------------------------- damaged bundles
def _set(path: str, value):
    """A manifest edit: set the value at a dotted path ('model.context_length')."""
    def change(manifest):
        *parents, key = path.split(".")
        section = manifest
        for name in parents:
            section = section[name]
        section[key] = value
    return change


def _write(name: str, data: bytes):
    def damage(bundle: Path):
        (bundle / name).write_bytes(data)
    return damage


def _manifest(change):
    return lambda bundle: edit_manifest(bundle, change)


def _truncate(name: str):
    def damage(bundle: Path):
        path = bundle / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


def _junk_decoder_recorded(bundle: Path):
    """The decoder graph replaced by bytes that are no protobuf message, its size and hash recorded to match."""
    (bundle / "decoder" / "model.onnx").write_bytes(b"\xff" * 64)
    rehash(bundle, "decoder/model.onnx")


def _symlink_out(bundle: Path):
    """tokenizer.json replaced by a symbolic link to a file outside the bundle."""
    outside = bundle.parent / "outside.json"
    shutil.copy(bundle / "tokenizer.json", outside)
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(outside)


def _files_escape(bundle: Path):
    edit_manifest(bundle, lambda m: m["files"].__setitem__("../../../../etc/hostname",
                                                           {"bytes": 1, "sha256": "0" * 64}))


def _role_not_listed(bundle: Path):
    edit_manifest(bundle, lambda m: m["files"].pop("tokenizer.json"))


def _no_hash(bundle: Path):
    edit_manifest(bundle, lambda m: m["files"]["vision.onnx"].pop("sha256"))


# (id, damage, text the error must contain): the manifest itself, then its paths, then the files, then the manifest
# against the files. All are refused by `ask --bundle`, `info` and `bench --bundle` alike.
DAMAGED = [
    ("manifest-binary", _write("manifest.json", bytes(range(256))), "manifest.json is not valid JSON"),
    ("manifest-a-list", _write("manifest.json", b"[1, 2, 3]"), "not an edge-vlm bundle manifest (a JSON list"),
    ("manifest-empty", _write("manifest.json", b""), "manifest.json is not valid JSON"),
    ("precision-int3", _manifest(_set("precision.decoder", "int3")), "decoder precision 'int3' is not one of"),
    ("precision-missing", _manifest(lambda m: m.pop("precision")), "has no 'precision' section"),
    ("context-a-text", _manifest(_set("model.context_length", "512")), "model.context_length is '512', not a whole"),
    ("image-tokens-negative", _manifest(_set("model.num_image_tokens", -16)), "model.num_image_tokens is -16"),
    ("image-id-outside-vocab", _manifest(_set("model.image_token_id", 10**6)), "outside the vocabulary of 528"),
    ("files-path-escapes", _files_escape, "'../../../../etc/hostname', outside the bundle"),
    ("role-path-absolute", _manifest(_set("roles.tokenizer", "/etc/hostname")), "'/etc/hostname', outside the bundle"),
    ("role-path-dotdot", _manifest(_set("roles.vision", "../bundle/vision.onnx")), "outside the bundle"),
    ("symlink-outside", _symlink_out, "tokenizer.json is a symbolic link to"),
    ("tensorrt-digest-a-path", _manifest(_set("tensorrt", {"vision": {"precision": "fp16", "max_batch": 4,
                                                                      "onnx_sha256": "/../../../../tmp/x"}})),
     "tensorrt.vision needs"),
    ("role-not-in-files", _role_not_listed, "the tokenizer file tokenizer.json is not among its files"),
    ("file-entry-no-hash", _no_hash, "the entry of vision.onnx needs 'bytes'"),
    ("onnx-missing", lambda b: (b / "vision.onnx").unlink(), "is missing vision.onnx"),
    ("onnx-truncated", _truncate("decoder/model.onnx"), "model.onnx is truncated"),
    ("fp16-over-int4-graph", _manifest(_set("precision.decoder", "fp16")),
     "says the decoder is fp16, but"),
    ("context-beyond-rotary", _manifest(_set("model.context_length", 4096)),
     "model.context_length 4096 is more than the decoder"),
    ("vision-fp16-over-fp32-graph", _manifest(_set("precision.vision", "fp16")), "says the vision part is fp16"),
    ("embeddings-float32-over-float16", _manifest(_set("precision.embeddings", "float32")),
     "says the embeddings are float32"),
    ("decoder-not-onnx", _junk_decoder_recorded, "cannot load the decoder"),
]
COMMANDS = {
    "ask": lambda b: ["ask", "--bundle", b, "--max-new-tokens", "2", "What is this?"],
    "info": lambda b: ["info", b],
    "bench": lambda b: ["bench", "--bundle", b, "--quiet", "--new-tokens", "2", "--runs", "1", "--warmup", "0"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("damage,match", [pytest.param(d, m, id=i) for i, d, m in DAMAGED])
def test_damaged_bundle_is_refused(refused, bundle, damage, match, command):
    damage(bundle)
    refused(*COMMANDS[command](bundle), match=match, watch=[bundle.parent])


def test_intact_copy_passes_every_check(refused, bundle):
    """The same copy undamaged: `info` checks every hash and exits 0 (so the refusals above are the damage's)."""
    outcome = refused.run("info", bundle)
    assert outcome.code == 0 and outcome.stderr == "", outcome.stderr
    assert "decoder int4" in outcome.stdout and ": OK" in outcome.stdout


@pytest.mark.parametrize("command", ["ask", "info"])
def test_changed_weights_fail_the_hash(refused, bundle, command):
    """A flipped byte keeps the size: only the sha256 sees it (bench checks sizes only, see --verify)."""
    path = bundle / "decoder" / "model.onnx.data"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(*COMMANDS[command](bundle), match="model.onnx.data does not match its sha256", watch=[bundle.parent])


def test_info_describes_a_damaged_bundle_before_refusing_it(refused, bundle):
    (bundle / "embeddings.npy").write_bytes(b"")
    outcome = refused("info", bundle, match="embeddings.npy is truncated (0 bytes", watch=[bundle.parent])
    assert "precision         vision fp32, decoder int4" in outcome.stdout


def test_info_reports_unreadable_checkpoint_weights(refused, exportable_tiny, tmp_path):  # noqa: F811
    checkpoint = Path(shutil.copytree(exportable_tiny, tmp_path / "checkpoint"))
    (checkpoint / "model.safetensors").write_bytes(b"\x00garbage, not a safetensors header" * 8)
    refused("info", checkpoint, match="model.safetensors", watch=[checkpoint])


# ------------------------------------------------------------------------------------------------------ export
@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the export gets as far as loading the checkpoint: every refusal here must come first."""
    from edge_vlm.export import pipeline

    def loaded(*_args, **_kwargs):
        raise AssertionError("the export loaded the checkpoint before refusing its output")

    monkeypatch.setattr(pipeline, "_load", loaded)


def test_export_force_keeps_a_users_folder(refused, exportable_tiny, tmp_path, no_loading):  # noqa: F811
    folder = tmp_path / "my-notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("three years of work")
    refused("export", "--model", exportable_tiny, "--out", folder, "--force",
            match="--force replaces only an earlier bundle or an empty folder", watch=[tmp_path])
    assert (folder / "thesis.txt").read_text() == "three years of work"


def test_export_force_keeps_a_users_file(refused, exportable_tiny, tmp_path, no_loading):  # noqa: F811
    target = tmp_path / "results.csv"
    target.write_text("a,b\n1,2\n")
    refused("export", "--model", exportable_tiny, "--out", target, "--force", match="is a file that is neither",
            watch=[tmp_path])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "tmp"]  # no .results.csv.old-* left


def test_export_without_force_keeps_an_earlier_bundle(refused, exportable_tiny, bundle, no_loading):  # noqa: F811
    refused("export", "--model", exportable_tiny, "--out", bundle, match="already exists; pass --force",
            watch=[bundle.parent])


def test_export_out_under_a_file(refused, exportable_tiny, tmp_path, no_loading):  # noqa: F811
    (tmp_path / "plain-file").write_text("x")
    refused("export", "--model", exportable_tiny, "--out", tmp_path / "plain-file" / "bundle",
            match="plain-file is a file, not a folder", watch=[tmp_path])


def test_export_out_in_a_read_only_folder(refused, exportable_tiny, readonly_dir, no_loading):  # noqa: F811
    refused("export", "--model", exportable_tiny, "--out", readonly_dir / "bundle", match="not writable",
            watch=[readonly_dir])


def test_export_out_holding_the_checkpoint(refused, exportable_tiny, tmp_path, no_loading):  # noqa: F811
    shutil.copytree(exportable_tiny, tmp_path / "work" / "checkpoint")
    refused("export", "--model", tmp_path / "work" / "checkpoint", "--out", tmp_path / "work", "--force",
            match="holds the checkpoint", watch=[tmp_path / "work"])


@pytest.mark.parametrize("profile,match", [
    ("name: x\nexecution_provider: cpu\ndefault_precision: int4\nprecisions: [int4]\nvision_precision: fp32\n"
     "accuracy_level: 4\nblock_size: 7\n", "block_size must be 16, 32, 64, 128 or 256, got 7"),
    ("name: x\nexecution_provider: cpu\ndefault_precision: int4\nprecisions: 42\nvision_precision: fp32\n"
     "accuracy_level: 4\n", "precisions must be a list"),
])
def test_export_bad_target_profile(refused, exportable_tiny, tmp_path, profile, match, no_loading):  # noqa: F811
    (tmp_path / "target.yaml").write_text(profile)
    outcome = refused("export", "--model", exportable_tiny, "--out", tmp_path / "b", "--target",
                      tmp_path / "target.yaml", match=match, watch=[tmp_path])
    assert "target.yaml" in outcome.stderr


# ------------------------------------------------------------------------------------------------------- bench
BENCH = ["bench", "--quiet", "--new-tokens", "2", "--runs", "1", "--warmup", "0", "--bandwidth-mib", "8"]


def test_bench_json_in_a_read_only_folder(refused, int4_bundle, readonly_dir):  # noqa: F811
    refused(*BENCH, "--bundle", int4_bundle, "--json", readonly_dir / "report.json", match="not writable",
            watch=[readonly_dir])


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--plot"])
def test_bench_output_under_a_file(refused, int4_bundle, tmp_path, flag):  # noqa: F811
    (tmp_path / "plain-file").write_text("x")
    refused(*BENCH, "--bundle", int4_bundle, flag, tmp_path / "plain-file" / "out", match="is a file, not a folder",
            watch=[tmp_path])


def test_bench_json_onto_a_folder(refused, int4_bundle, tmp_path):  # noqa: F811
    (tmp_path / "reports").mkdir()
    refused(*BENCH, "--bundle", int4_bundle, "--json", tmp_path / "reports", match="is a folder: give a file name",
            watch=[tmp_path])


def test_bench_prompt_longer_than_the_context(refused, int4_bundle):  # noqa: F811
    # the tiny model's context is 512 tokens (its config's max_position_embeddings, recorded by the export)
    refused(*BENCH, "--bundle", int4_bundle, "--prompt-tokens", "600",
            match="--prompt-tokens 600 + 2 new tokens exceed the 512-token context", watch=[int4_bundle])


def test_bench_new_tokens_leave_no_room(refused, int4_bundle):  # noqa: F811
    refused(*BENCH[:2], "--new-tokens", "512", "--bundle", int4_bundle, match="leaves no room for a prompt",
            watch=[int4_bundle])


@pytest.mark.parametrize("text,match", [
    ("settings: 42\n", "'settings' must be a mapping of keys"),
    ("settings: [runs, 3]\n", "'settings' must be a mapping of keys"),
    ("settings:\n  runs: three\n", "settings.runs: runs must be a whole number"),
    ("settings:\n  runs: 0\n", "settings.runs: runs must be a whole number from 1"),
    ("settings:\n  warmup: 1.5\n", "settings.warmup"),
    ("settings:\n  new_tokens: .inf\n", "not a finite number"),
    ("settings:\n  bandwidth_mib: 1000000000\n", "settings.bandwidth_mib"),
    ("settings:\n  random_weights: 1\n", "random-weights must be true or false"),
    ("settings:\n  backends: {ort: int4}\n", "settings.backends"),
    ("settings:\n  device: 3\n", "settings.device"),
])
def test_bench_bad_scenario(refused, int4_bundle, tmp_path, text, match):  # noqa: F811
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(text)
    outcome = refused("bench", "--scenario", scenario, "--bundle", int4_bundle, "--quiet", match=match,
                      watch=[tmp_path])
    assert "scenario.yaml" in outcome.stderr


def test_bench_failed_backend_is_reported_on_stderr(refused, exportable_tiny, int4_bundle, tmp_path):  # noqa: F811
    """A backend that fails while measuring: exit 1, one stderr line naming it, the other backend still measured and
    its numbers written."""
    checkpoint = Path(shutil.copytree(exportable_tiny, tmp_path / "checkpoint"))
    (checkpoint / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    report = tmp_path / "report.json"
    outcome = refused.run(*BENCH, "--model", checkpoint, "--bundle", int4_bundle, "--backend", "torch-fp32,ort-int4",
                          "--prompt-tokens", "72", "--json", report)
    errors = [line for line in outcome.stderr.splitlines() if "error" in line]
    assert outcome.code == 1, outcome.stderr
    assert len(errors) == 1 and errors[0].startswith("edge-vlm bench: error: torch-fp32: "), outcome.stderr
    assert "Traceback" not in outcome.stderr
    statuses = {b["name"]: b["status"] for b in json.loads(report.read_text())["backends"]}
    assert statuses == {"torch-fp32": "error", "ort-int4": "ok"}
