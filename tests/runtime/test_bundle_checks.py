"""Damaged bundles fail with a clear EdgeVLMError naming the problem: a missing file, a hash mismatch, a wrong
schema version, a truncated ONNX file (with and without the hash check)."""

from __future__ import annotations

import json
import shutil

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
