"""Target profiles: the YAML files in export/targets/ say exactly what the built-in profiles are."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_vlm.errors import EdgeVLMError
from edge_vlm.export.targets import TARGETS, get_target, load_target_file

FILES = Path(__file__).resolve().parents[2] / "export" / "targets"


@pytest.mark.parametrize("name,file", [("cpu", "cpu.yaml"), ("cuda", "cuda.yaml"), ("jetson", "jetson-orin.yaml")])
def test_yaml_profiles_equal_the_built_in_ones(name, file):
    assert load_target_file(FILES / file) == TARGETS[name]
    assert get_target(str(FILES / file)) == get_target(name)


def test_profile_rules():
    assert get_target("jetson-orin") is get_target("jetson") and get_target("jetson").tensorrt
    assert "fp16" not in get_target("cpu").precisions and get_target("cuda").gpu
    with pytest.raises(EdgeVLMError, match="unknown target 'tpu'"):
        get_target("tpu")


def test_bad_profile_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspeed: fast\n")
    with pytest.raises(EdgeVLMError, match="unknown keys"):
        load_target_file(bad)
    with pytest.raises(EdgeVLMError, match="not found"):
        load_target_file(tmp_path / "missing.yaml")
