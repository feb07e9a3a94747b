"""Damaged bundles fail with a clear EdgeVLMError naming the problem: a missing file, a hash mismatch, a wrong
schema version, a truncated ONNX file (with and without the hash check); the graph reader behind the manifest's
checks against the files. (Every damage through the CLI: tests/bad_inputs/test_bundles.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import PurePosixPath

import pytest

from edge_vlm.errors import EdgeVLMError
from edge_vlm.runtime import BundleEngine
from edge_vlm.runtime.bundle import SCHEMA_VERSION, Bundle


@pytest.fixture
def copy(fp32_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, target)
    return target


def test_intact_bundle_opens(copy):
    assert Bundle.open(copy).model["num_image_tokens"] == 16


def test_missing_file(copy):
    (copy / "embeddings.npy").unlink()
    with pytest.raises(EdgeVLMError, match=r"missing embeddings\.npy"):
        BundleEngine.from_bundle(copy)


def test_hash_mismatch_same_size(copy):
    path = copy / "decoder" / "model.onnx.data"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EdgeVLMError, match="does not match its sha256"):
        BundleEngine.from_bundle(copy)
    Bundle.open(copy, verify="size")  # the size check alone cannot see it: that is what the hash is for


def test_wrong_schema_version(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeVLMError, match=f"schema version {SCHEMA_VERSION + 1}.*re-export"):
        BundleEngine.from_bundle(copy)


def test_truncated_onnx(copy):
    path = copy / "vision.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EdgeVLMError, match=r"vision\.onnx is truncated"):
        BundleEngine.from_bundle(copy)
    # without the manifest's checks ONNX Runtime meets the damage itself: still a clear, one-line EdgeVLMError
    with pytest.raises(EdgeVLMError, match="cannot load the vision model .*truncated or damaged"):
        BundleEngine.from_bundle(copy, verify="none")


def test_not_a_bundle(tmp_path, exportable_tiny):
    with pytest.raises(EdgeVLMError, match="looks like a checkpoint"):
        Bundle.open(exportable_tiny)
    with pytest.raises(EdgeVLMError, match="bundle not found"):
        Bundle.open(tmp_path / "nothing")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(EdgeVLMError, match="not valid JSON"):
        Bundle.open(tmp_path / "b")


@pytest.mark.parametrize("bundle_fixture", ["fp32_bundle", "int4_bundle"])
@pytest.mark.parametrize("role", ["decoder", "vision"])
def test_graph_reader_agrees_with_onnx(request, bundle_fixture, role):
    """The runtime reads a graph's structure with a protobuf subset of onnx.proto (no `onnx` install needed): what it
    sees must be what the onnx package itself reads from the same file."""
    import onnx

    from edge_vlm.runtime.bundle import _read_graph

    bundle = Bundle.open(request.getfixturevalue(bundle_fixture), verify="none")
    path = bundle.file(role)
    ours, theirs = _read_graph(path, role).graph, onnx.load(str(path), load_external_data=False).graph
    assert [n.op_type for n in ours.node] == [n.op_type for n in theirs.node]
    assert [list(n.input) for n in ours.node] == [list(n.input) for n in theirs.node]
    assert [[(a.name, a.i) for a in n.attribute] for n in ours.node] == \
        [[(a.name, a.i) for a in n.attribute] for n in theirs.node]
    assert [(t.name, list(t.dims), t.data_type) for t in ours.initializer] == \
        [(t.name, list(t.dims), t.data_type) for t in theirs.initializer]
    assert [(v.name, v.type.tensor_type.elem_type) for v in ours.input] == \
        [(v.name, v.type.tensor_type.elem_type) for v in theirs.input]


def test_graph_facts(fp32_bundle, int4_bundle, exportable_tiny):
    """The decoder's precision from its MatMulNBits bits, and the rotary table's rows: the builder sizes cos_cache
    by the checkpoint's max_position_embeddings."""
    from edge_vlm.runtime.bundle import _decoder_precision, _read_graph, _rotary_positions

    config = json.loads((exportable_tiny / "config.json").read_text())
    for bundle, precision in ((fp32_bundle, "fp32"), (int4_bundle, "int4")):
        graph = _read_graph(bundle / "decoder" / "model.onnx", "decoder")
        assert _decoder_precision(graph) == precision
        assert _rotary_positions(graph) == config["text_config"]["max_position_embeddings"]


def test_only_a_bundle_is_replaceable(copy, tmp_path, exportable_tiny):
    from edge_vlm.runtime.bundle import is_bundle_dir

    assert is_bundle_dir(copy)
    assert not is_bundle_dir(exportable_tiny)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "manifest.json").write_text('{"format": "something else"}')
    assert not is_bundle_dir(notes)
    (notes / "manifest.json").write_bytes(b"\xff\xfe")
    assert not is_bundle_dir(notes)


@pytest.mark.parametrize("bundle_fixture", ["fp32_bundle", "int4_bundle"])
def test_export_lists_every_file_the_runtime_reads(request, bundle_fixture):
    """Every external-data file the graphs name (found by onnx's own external_data_helper) and the tokenizer.json
    the runtime reads are in the manifest's files; the runtime's reader finds the same external-data files."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    from edge_vlm.runtime.bundle import _read_graph, external_data

    root = request.getfixturevalue(bundle_fixture)
    manifest = json.loads((root / "manifest.json").read_text())
    assert "tokenizer.json" in manifest["files"]
    for role in ("vision", "decoder"):
        name = manifest["roles"][role]
        model = onnx.load(str(root / name), load_external_data=False)
        folder = PurePosixPath(name).parent
        theirs = {(folder / ExternalDataInfo(t).location).as_posix() for t in _get_all_tensors(model)
                  if uses_external_data(t)}
        assert theirs and theirs <= set(manifest["files"]), (role, theirs)
        assert set(external_data(root, name, _read_graph(root / name, role))) == theirs
