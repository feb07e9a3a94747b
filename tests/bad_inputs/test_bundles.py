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

import numpy as np
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


def _unlisted(name: str):
    """A file the runtime reads left out of the manifest's `files` (so its size and sha256 would never be checked),
    then damaged: only the rule that every such file is listed can refuse it."""
    def damage(bundle: Path):
        edit_manifest(bundle, lambda m: m["files"].pop(name))
        path = bundle / name
        path.write_bytes(b"\xff" * path.stat().st_size)
    return damage


def _tokenizer_json_unlisted(bundle: Path):
    """The tokenizer role points at tokenizer_config.json; the tokenizer.json beside it, which is what the runtime
    reads, is left out of `files`."""
    def change(manifest):
        manifest["roles"]["tokenizer"] = "tokenizer_config.json"
        manifest["files"].pop("tokenizer.json")
    edit_manifest(bundle, change)


def _external_data_outside(bundle: Path):
    """vision.onnx (re-hashed) names a file outside the bundle as one tensor's external data."""
    import onnx

    path = bundle / "vision.onnx"
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    next(e for e in tensor.external_data if e.key == "location").value = "../../../../etc/hostname"
    onnx.save_model(model, str(path))
    rehash(bundle, "vision.onnx")


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
    ("decoder-data-not-listed", _unlisted("decoder/model.onnx.data"),
     "decoder/model.onnx.data, which decoder/model.onnx reads its weights from, is not among its files"),
    ("vision-data-not-listed", _unlisted("vision.onnx.data"),
     "vision.onnx.data, which vision.onnx reads its weights from, is not among its files"),
    ("external-data-outside", _external_data_outside, "'../../../../etc/hostname', outside the bundle"),
    ("tokenizer-json-not-listed", _tokenizer_json_unlisted,
     "tokenizer.json, which the runtime reads the tokenizer from, is not among its files"),
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


# ---------------------------------------------------------------------------- weights that are not numbers (info)
# Each damage keeps the manifest's hashes true (re-hashed with hashlib), so only the finite-weights check sees it.
# Where the tensors lie is read with the onnx package (load_external_data=False), not with the code under test.
def _onnx_external(bundle: Path, graph: str):
    import onnx

    model = onnx.load(str(bundle / graph), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL}


def _fill_nan(name: str):
    def damage(bundle: Path):
        size = (bundle / name).stat().st_size
        (bundle / name).write_bytes(np.full(size // 4, np.nan, "<f4").tobytes())
        rehash(bundle, name)
    return damage


def _fill_ff(name: str):
    def damage(bundle: Path):
        (bundle / name).write_bytes(b"\xff" * (bundle / name).stat().st_size)
        rehash(bundle, name)
    return damage


def _decoder_scales_nan(bundle: Path) -> str:
    """One MatMulNBits node's float scales (its third input) set to NaN inside decoder/model.onnx.data."""
    import onnx

    model = onnx.load(str(bundle / "decoder" / "model.onnx"), load_external_data=False)
    scales = next(node.input[2] for node in model.graph.node if node.op_type == "MatMulNBits")
    entry = _onnx_external(bundle, "decoder/model.onnx")[scales]
    tensor = next(t for t in model.graph.initializer if t.name == scales)
    assert tensor.data_type == onnx.TensorProto.FLOAT  # the CPU INT4 export keeps fp32 scales
    data = bytearray((bundle / "decoder" / "model.onnx.data").read_bytes())
    offset, length = int(entry.get("offset", 0)), int(entry["length"])
    data[offset:offset + length] = np.full(length // 4, np.nan, "<f4").tobytes()
    (bundle / "decoder" / "model.onnx.data").write_bytes(bytes(data))
    rehash(bundle, "decoder/model.onnx.data")
    return scales


def _vision_inline_nan(bundle: Path) -> str:
    """A float initializer stored inside vision.onnx itself (not in its external data) set to NaN."""
    import onnx

    path = bundle / "vision.onnx"
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.raw_data
                  and t.data_location != onnx.TensorProto.EXTERNAL)
    tensor.raw_data = np.full(len(tensor.raw_data) // 4, np.nan, "<f4").tobytes()
    onnx.save_model(model, str(path))
    rehash(bundle, "vision.onnx")
    return tensor.name


def _embedding_one_inf(bundle: Path):
    table = np.load(bundle / "embeddings.npy")
    table[7, 3] = np.inf
    np.save(bundle / "embeddings.npy", table)
    rehash(bundle, "embeddings.npy")


NON_FINITE = [
    ("vision-data-nan", _fill_nan("vision.onnx.data"), "vision.onnx.data: the weight "),
    ("decoder-data-ff", _fill_ff("decoder/model.onnx.data"), "model.onnx.data: the weight "),
    ("embeddings-one-inf", _embedding_one_inf, "embeddings.npy: the embedding table holds NaN or infinity"),
]


@pytest.mark.parametrize("damage,match", [pytest.param(d, m, id=i) for i, d, m in NON_FINITE])
def test_info_refuses_non_finite_weights(refused, bundle, damage, match):
    damage(bundle)
    refused("info", bundle, match=match, watch=[bundle.parent])


@pytest.mark.parametrize("damage,graph", [(_decoder_scales_nan, "decoder/model.onnx"),
                                          (_vision_inline_nan, "vision.onnx")], ids=["decoder-scales", "vision-inline"])
def test_info_names_the_non_finite_tensor(refused, bundle, damage, graph):
    name = damage(bundle)
    outcome = refused("info", bundle, match=f"the weight {name} ", watch=[bundle.parent])
    assert "holds NaN or infinity" in outcome.stderr and graph.split("/")[-1] in outcome.stderr


def test_info_verify_size_reads_no_weight(refused, bundle):
    """--verify size is the quick check: neither hashes nor weight values are read (as documented)."""
    _fill_nan("vision.onnx.data")(bundle)
    outcome = refused.run("info", bundle, "--verify", "size")
    assert outcome.code == 0 and "every file's size;" in outcome.stdout, outcome.stderr


# ------------------------------------------------------------------------------------------ checkpoints (info)
def _edit_weights(change):
    """Rewrite a checkpoint's model.safetensors through safetensors itself with `change(tensors)` applied."""
    def damage(checkpoint: Path):
        from safetensors.torch import load_file, save_file

        tensors = load_file(checkpoint / "model.safetensors")
        change(tensors)
        save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})
    return damage


def _first(tensors: dict, part: str) -> str:
    return next(name for name in sorted(tensors) if part in name)


CHECKPOINT_DAMAGED = [
    ("tensor-missing", _edit_weights(lambda t: t.pop("lm_head.bias")), "1 tensors missing (lm_head.bias)"),
    ("tensor-reshaped", _edit_weights(lambda t: t.__setitem__("lm_head.bias", t["lm_head.bias"][:7].clone())),
     "1 tensors of the wrong shape (lm_head.bias"),
    ("projector-nan", _edit_weights(lambda t: t["model.multi_modal_projector.linear_1.weight"].fill_(float("nan"))),
     "the weight model.multi_modal_projector.linear_1.weight holds NaN or infinity"),
    ("llm-one-inf", _edit_weights(lambda t: t[_first(t, "mlp.fc1.weight")].view(-1).__setitem__(5, float("inf"))),
     "mlp.fc1.weight holds NaN or infinity"),
]


@pytest.mark.parametrize("damage,match", [pytest.param(d, m, id=i) for i, d, m in CHECKPOINT_DAMAGED])
def test_info_runs_the_checks_loading_runs(refused, exportable_tiny, tmp_path, damage, match):  # noqa: F811
    checkpoint = Path(shutil.copytree(exportable_tiny, tmp_path / "checkpoint"))
    damage(checkpoint)
    outcome = refused("info", checkpoint, match=match, watch=[checkpoint])
    assert "checkpoint " in outcome.stdout  # described first, as for a bundle


def test_info_intact_checkpoint(refused, exportable_tiny):  # noqa: F811
    outcome = refused.run("info", exportable_tiny)
    assert outcome.code == 0 and outcome.stderr == "", outcome.stderr
    assert "every float weight finite: OK" in outcome.stdout


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
    # NaN weights: whole files with every tensor, so only loading (in the worker) finds them
    _edit_weights(lambda t: t["model.multi_modal_projector.linear_1.weight"].fill_(float("nan")))(checkpoint)
    report = tmp_path / "report.json"
    outcome = refused.run(*BENCH, "--model", checkpoint, "--bundle", int4_bundle, "--backend", "torch-fp32,ort-int4",
                          "--prompt-tokens", "72", "--json", report)
    errors = [line for line in outcome.stderr.splitlines() if "error" in line]
    assert outcome.code == 1, outcome.stderr
    assert len(errors) == 1 and errors[0].startswith("edge-vlm bench: error: torch-fp32: "), outcome.stderr
    assert "Traceback" not in outcome.stderr
    statuses = {b["name"]: b["status"] for b in json.loads(report.read_text())["backends"]}
    assert statuses == {"torch-fp32": "error", "ort-int4": "ok"}
