"""read_yaml_mapping: the one reader of plans, scenarios and target profiles."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from edge_vlm.configfile import MAX_CONFIG_BYTES, read_yaml_mapping
from edge_vlm.errors import EdgeVLMError

REPO = Path(__file__).resolve().parents[1]


def test_reads_a_mapping_and_an_empty_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\nb: [x, y]\n")
    assert read_yaml_mapping(good, "plan") == {"a": 1, "b": ["x", "y"]}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml_mapping(empty, "plan") == {}


def test_every_yaml_file_of_the_repository_reads_as_pyyaml_reads_it():
    # the strictness (duplicate keys, non-finite numbers) must not change what a valid file means
    files = subprocess.run(["git", "ls-files", "*.yaml", "*.yml"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files
    for name in files:
        assert read_yaml_mapping(REPO / name, "file") == yaml.safe_load((REPO / name).read_text()), name


def test_merge_keys_and_a_byte_order_mark_are_fine(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\xef\xbb\xbfbase: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert read_yaml_mapping(path, "plan") == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}}


# The expected positions are counted by hand, 1-based as editors show them.
@pytest.mark.parametrize("text, message", [
    (None, "scenario not found"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("a: 1\nb: c: d\n", "s.yaml:2:5: mapping values are not allowed here"),
    ("a: [1, 2\nb: 3\n", "s.yaml:2:2: "),
    ("a:\n\tb: 1\n", "s.yaml:2:1: found character '\\t' that cannot start any token"),
    ("lr: 1\nx: .nan\n", "s.yaml:2:4: x: .nan is not a finite number"),
    ("betas: [0.9, -.inf]\n", "s.yaml:1:14: -.inf is not a finite number"),
    ("lr: 1\nseed: 2\nlr: 3\n", "s.yaml:3:1: key 'lr' is given twice (first at line 1)"),
    ("a: 1\nb: x\x07y\n", "s.yaml:2:5: character #x0007 is not allowed"),
    ("a: !!python/object/apply:os.system [ls]\n", "s.yaml:1:4: could not determine a constructor"),
])
def test_bad_files_name_the_path_in_one_line(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(EdgeVLMError) as info:
        read_yaml_mapping(path, "scenario")
    assert message in str(info.value)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("data, message", [
    (bytes(range(256)), "is a binary file, not YAML text"),
    ("a: 1\nb: caf\u00e9\n".encode("latin-1"), "s.yaml:2: the scenario is not UTF-8 text (byte 0xe9 at offset 11)"),
])
def test_bytes_that_are_not_text_are_refused(tmp_path, data, message):
    path = tmp_path / "s.yaml"
    path.write_bytes(data)
    with pytest.raises(EdgeVLMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_yaml_mapping(path, "scenario")


def test_a_folder_or_a_huge_file_is_refused_before_reading(tmp_path):
    with pytest.raises(EdgeVLMError, match="is not a regular file"):
        read_yaml_mapping(tmp_path, "plan")
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:  # sparse: no disk used
        handle.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(EdgeVLMError, match="more than a config file's limit"):
        read_yaml_mapping(big, "plan")
