"""Damaged model settings and weights that load without a format error: a config.json with impossible shapes,
edge_vlm.json / manifest image settings that would divide by zero or allocate without bound, an unknown template,
and weights that hold NaN or infinity. Each is refused in one line naming the file (or, for weights, the output)
instead of a deep traceback, a hang or a fluent-looking answer computed from garbage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.bad_inputs.test_bundles import edit_manifest
from tests.export.conftest import export_base, exportable_tiny, int4_bundle  # noqa: F401


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "pic.png"
    Image.new("RGB", (40, 30), (20, 160, 20)).save(path)
    return path


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path):
    """A copy of the tiny checkpoint labelled as trained (as a user's would be), so no 'random weights' note comes
    before the error."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    _edit_json(copy / "edge_vlm.json", lambda meta: meta.__setitem__("random_weights", False))
    return copy


def _edit_json(path: Path, change):
    data = json.loads(path.read_text())
    data = change(data) or data
    path.write_text(json.dumps(data))


def _set(section, key, value):
    def change(data):
        (data[section] if section else data)[key] = value
    return change


CONFIG_DAMAGE = {
    "a JSON array": (lambda data: [data], "config.json"),
    "layers as a string": (_set("text_config", "num_hidden_layers", "4"), "text_config.num_hidden_layers"),
    "zero width": (_set("text_config", "hidden_size", 0), "text_config.hidden_size"),
    "fractional heads": (_set("text_config", "num_attention_heads", 2.5), "text_config.num_attention_heads"),
    "width not divisible by heads": (_set("vision_config", "num_attention_heads", 7), "not divisible"),
    "another model type": (_set(None, "model_type", "bert"), "model_type"),
    "a vocabulary of 10^12": (_set("text_config", "vocab_size", 10**12), "vocab_size"),
    "no text_config": (lambda data: {k: v for k, v in data.items() if k != "text_config"}, "text_config"),
    "rope theta NaN": (lambda data: data["text_config"].setdefault("rope_parameters", {}).__setitem__(
        "rope_theta", float("nan")), "rope_theta"),
}


@pytest.mark.parametrize("verb", ["ask", "info"])
@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_config_json_with_impossible_shapes(refused, checkpoint, picture, tmp_path, damage, verb):
    change, match = CONFIG_DAMAGE[damage]
    _edit_json(checkpoint / "config.json", change)
    argv = ["info", checkpoint] if verb == "info" else ["ask", "--model", checkpoint, "--image", picture, "q"]
    refused(*argv, match=match, watch=[tmp_path])


META_DAMAGE = {
    "std 0": (lambda m: m["image"].__setitem__("std", [0, 0, 0]), "std"),
    "mean NaN": (lambda m: m["image"].__setitem__("mean", [float("nan")] * 3), "mean"),
    "mean a string": (lambda m: m["image"].__setitem__("mean", "grey"), "mean"),
    "one mean for three channels": (lambda m: m["image"].__setitem__("mean", [0.5]), "mean"),
    "image size a million": (lambda m: m["image"].__setitem__("image_size", 1_000_000), "image_size"),
    "image size unlike the tower's": (lambda m: m["image"].__setitem__("image_size", 336), "image_size"),
    "unknown template": (lambda m: m.__setitem__("template", "llama-3"), "template"),
    "another format": (lambda m: m.__setitem__("format", "something-else"), "format"),
    "a future version": (lambda m: m.__setitem__("version", 99), "version"),
}


@pytest.mark.parametrize("damage", list(META_DAMAGE))
def test_checkpoint_settings_that_cannot_be_used(refused, checkpoint, picture, tmp_path, damage):
    change, match = META_DAMAGE[damage]
    _edit_json(checkpoint / "edge_vlm.json", change)
    out = refused("ask", "--model", checkpoint, "--image", picture, "q", match=match, watch=[tmp_path])
    assert "edge_vlm.json" in out.stderr


def _poison(name: str, value: float, everywhere: bool):
    def edit(tensors):
        tensor = tensors[name]
        if everywhere:
            tensor.fill_(value)
        else:
            tensor.view(-1)[0] = value
    return edit


@pytest.mark.parametrize(("part", "value", "everywhere"), [
    ("multi_modal_projector.linear_1.weight", float("nan"), True),
    ("vision_tower.embeddings.patch_embedding.weight", float("nan"), True),
    ("lm_head.weight", float("nan"), False),
    ("lm_head.bias", float("inf"), False),
    ("embed_tokens.weight", float("inf"), False),  # a row no question may use: refused at load all the same
])
def test_weights_holding_nan_or_infinity_answer_nothing(refused, checkpoint, picture, tmp_path, part, value,
                                                         everywhere):
    weights = checkpoint / "model.safetensors"
    tensors = load_file(str(weights))
    (name,) = [key for key in tensors if key.endswith(part)]
    _poison(name, value, everywhere)(tensors)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    refused("ask", "--model", checkpoint, "--image", picture, "What colour is it?", match="NaN or infinity",
            watch=[tmp_path])


def test_an_integer_weight_is_refused_not_cast(refused, checkpoint, picture, tmp_path):
    """transformers would cast an int32 lm_head to float silently."""
    weights = checkpoint / "model.safetensors"
    tensors = load_file(str(weights))
    (name,) = [key for key in tensors if key.endswith("lm_head.weight")]
    tensors[name] = tensors[name].round().to(dtype=torch.int32)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    refused("ask", "--model", checkpoint, "--image", picture, "q", match="not floating point", watch=[tmp_path])


MANIFEST_DAMAGE = {
    "std 0": (lambda m: m["image"].__setitem__("std", [0.0, 0.0, 0.0]), "std"),
    "mean NaN": (lambda m: m["image"].__setitem__("mean", [float("nan")] * 3), "mean"),
    "image size 100000": (lambda m: m["image"].__setitem__("image_size", 100_000), "image_size"),
    "unknown template": (lambda m: m["model"].__setitem__("template", "chatml"), "template"),
    "more layers than the graph": (lambda m: m["model"].__setitem__("num_layers", 32), "num_layers"),
}


@pytest.fixture
def bundle(int4_bundle, tmp_path):  # noqa: F811
    return Path(shutil.copytree(int4_bundle, tmp_path / "bundle"))


@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGE))
def test_bundle_settings_that_cannot_be_used(refused, bundle, picture, tmp_path, damage):
    change, match = MANIFEST_DAMAGE[damage]
    edit_manifest(bundle, change)
    refused("ask", "--bundle", bundle, "--image", picture, "q", match=match, watch=[tmp_path])


def test_a_manifest_key_given_twice_is_refused(refused, bundle, picture, tmp_path):
    """json keeps the last of two equal keys silently; which precision the writer meant is unknown."""
    path = bundle / "manifest.json"
    path.write_text(path.read_text().replace('"precision": {', '"precision": {"decoder": "fp32", ', 1))
    refused("info", bundle, match="given twice", watch=[tmp_path])


def test_an_embedding_table_of_the_wrong_shape_is_refused(refused, bundle, tmp_path):
    """A re-hashed table with too few rows: the hashes agree, the shape does not."""
    import numpy as np

    from tests.bad_inputs.test_bundles import rehash

    table = np.load(bundle / "embeddings.npy")
    np.save(bundle / "embeddings.npy", table[:100])
    rehash(bundle, "embeddings.npy")
    refused("info", bundle, match="embedding table", watch=[tmp_path])
