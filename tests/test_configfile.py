"""read_yaml_mapping: the one reader of plans, scenarios and target profiles."""

from __future__ import annotations

import pytest

from edge_vlm.configfile import read_yaml_mapping
from edge_vlm.errors import EdgeVLMError


def test_reads_a_mapping_and_an_empty_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\nb: [x, y]\n")
    assert read_yaml_mapping(good, "plan") == {"a": 1, "b": ["x", "y"]}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml_mapping(empty, "plan") == {}


@pytest.mark.parametrize("text, message", [(None, "scenario not found"), ("a: [1,\n", "cannot parse the scenario"),
                                           ("- 1\n- 2\n", "must be a mapping")])
def test_bad_files_name_the_path(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(EdgeVLMError, match=message) as info:
        read_yaml_mapping(path, "scenario")
    assert str(path) in str(info.value) and "\n" not in str(info.value).split(": ", 1)[0]
