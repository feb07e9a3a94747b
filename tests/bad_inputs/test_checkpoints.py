"""Damaged checkpoints and damaged LLaVA-Phi releases: every verb that opens one refuses it in one line that names the
file, writes nothing, and leaves the user's files as they were.

Every damaged input is made here from a good one: the `tiny_checkpoint` fixture (copied before it is damaged) and a
released-layout LLaVA-Phi folder written by tests/model/reference.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from edge_vlm.model.factory import small_tokenizer
from tests.model.reference import fuse_qkv, released_tensors, write_released


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path):
    """A copy of the tiny checkpoint, labelled as trained weights (as a user's checkpoint would be), so no verb prints
    its 'random weights' note before it gets to the weights."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    meta = json.loads((copy / "edge_vlm.json").read_text())
    (copy / "edge_vlm.json").write_text(json.dumps({**meta, "random_weights": False, "source": "a user's run"}))
    return copy


WEIGHT_DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: b"\x00\x01garbage, not a safetensors header" * 64,
}


def damage_weights(checkpoint, how: str):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(WEIGHT_DAMAGE[how](weights.read_bytes()))
    return weights


def edit_tensors(checkpoint, edit):
    weights = checkpoint / "model.safetensors"
    tensors = load_file(str(weights))
    edit(tensors)
    save_file(tensors, str(weights), metadata={"format": "pt"})


def train_plan(tmp_path, init_from):
    data = tmp_path / "sft.json"
    data.write_text(json.dumps([{"id": "s0", "conversations": [
        {"from": "human", "value": "What is one plus one?"}, {"from": "gpt", "value": "two"}]}]))
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"stage: sft\ninit_from: {init_from}\ndata_path: {data}\nglobal_batch_size: 1\n"
                    f"per_device_batch_size: 1\noutput_dir: {tmp_path / 'run'}\nprogress: false\nplot: false\n"
                    "num_threads: 1\n")
    return plan


def synth_data(root):
    """The smallest `synth` benchmark folder: eval.json with one question and its image."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    Image.new("RGB", (56, 56), (200, 20, 20)).save(root / "images" / "eval_00000.png")
    (root / "eval.json").write_text(json.dumps([{
        "id": "eval-0", "image": "images/eval_00000.png", "question_type": "color", "answer": "red",
        "conversations": [{"from": "human", "value": "<image>\nWhat color is the square?"},
                          {"from": "gpt", "value": "red"}]}]))
    return root


def verb_argv(verb, checkpoint, tmp_path):
    """The command line with which `verb` opens `checkpoint`, and the folders it must leave unchanged."""
    if verb == "ask":
        return ["ask", "--model", checkpoint, "What is this?"], [tmp_path]
    if verb == "export":  # its temp folder comes and goes beside the bundle: watch the checkpoint, check outputs
        (tmp_path / "out").mkdir(exist_ok=True)
        return ["export", "--model", checkpoint, "--out", tmp_path / "out" / "bundle"], [checkpoint]
    if verb == "eval --compare":  # the damaged source first: the good one would be evaluated before it
        data = synth_data(tmp_path / "synth")
        return (["eval", "--compare", checkpoint, checkpoint, "--benchmark", "synth", "--data", data,
                 "--out", tmp_path / "results", "--no-progress"], [checkpoint, data])
    plan = train_plan(tmp_path, checkpoint)  # train init_from
    return ["train", "--config", plan], [checkpoint, plan.parent / "sft.json"]


VERBS = ["ask", "export", "eval --compare", "train init_from"]


@pytest.mark.parametrize("how", list(WEIGHT_DAMAGE))
@pytest.mark.parametrize("verb", VERBS)
def test_unreadable_weights_are_refused_by_every_verb(refused, checkpoint, tmp_path, verb, how):
    weights = damage_weights(checkpoint, how)
    argv, watch = verb_argv(verb, checkpoint, tmp_path)
    outcome = refused(*argv, match="not a complete safetensors file", watch=watch)
    assert str(weights) in outcome.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


TENSOR_DAMAGE = {
    # a whole decoder layer gone: transformers alone would initialise it at random and only warn
    "missing decoder layer": (
        lambda t: [t.pop(k) for k in list(t) if ".layers.1." in k and "language_model" in k],
        "14 tensors missing (model.language_model.layers.1."),
    "extra tensor": (lambda t: t.update({"model.extra_head.weight": torch.zeros(4, 4)}),
                     "1 unexpected tensors (model.extra_head.weight)"),
    "mis-shaped tensor": (lambda t: t.update({"lm_head.bias": torch.zeros(7)}),
                          "lm_head.bias is (7,), config.json needs"),
}


@pytest.mark.parametrize("verb", ["ask", "export"])
@pytest.mark.parametrize("damage", list(TENSOR_DAMAGE))
def test_tensors_that_do_not_fit_the_config_are_refused(refused, checkpoint, tmp_path, damage, verb):
    edit, message = TENSOR_DAMAGE[damage]
    edit_tensors(checkpoint, edit)
    argv, watch = verb_argv(verb, checkpoint, tmp_path)
    outcome = refused(*argv, match=message, watch=watch)
    assert str(checkpoint / "model.safetensors") in outcome.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_train_refuses_a_start_checkpoint_missing_a_layer(refused, checkpoint, tmp_path):
    edit_tensors(checkpoint, TENSOR_DAMAGE["missing decoder layer"][0])
    argv, watch = verb_argv("train init_from", checkpoint, tmp_path)
    refused(*argv, match="tensors missing", watch=watch)


def shard(checkpoint):
    """Split the checkpoint's weights into two shards with an index, as save_pretrained does for big models."""
    tensors = load_file(str(checkpoint / "model.safetensors"))
    (checkpoint / "model.safetensors").unlink()
    keys = sorted(tensors)
    weight_map = {}
    for n, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]), start=1):
        name = f"model-{n:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(checkpoint / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_sharded_checkpoint_loads_and_a_missing_shard_is_refused(refused, checkpoint, tmp_path):
    shard(checkpoint)
    ok = refused.run("ask", "--model", checkpoint, "--max-new-tokens", "2", "What is this?")
    assert ok.code == 0, ok.stderr
    (checkpoint / "model-00002-of-00002.safetensors").unlink()
    outcome = refused("ask", "--model", checkpoint, "hi", match="does not exist", watch=[tmp_path])
    assert "model-00002-of-00002.safetensors" in outcome.stderr


def test_a_shard_without_the_tensors_its_index_names_is_refused(refused, checkpoint, tmp_path):
    weight_map = shard(checkpoint)
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.extra_head.weight"] = "model-00001-of-00002.safetensors"
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model.extra_head.weight" not in weight_map
    refused("ask", "--model", checkpoint, "hi", match="model-00001-of-00002.safetensors lacks 1 tensors",
            watch=[tmp_path])


# --- edge-vlm convert on damaged releases ------------------------------------------------------------------------


@pytest.fixture
def release(tmp_path):
    """A good released-layout LLaVA-Phi folder (fused q/k/v, one model.safetensors)."""
    return write_released(tmp_path / "LLaVA-Phi", small_tokenizer(), fuse_qkv(released_tensors()))


def _bin_shards(release):
    """The release re-saved as two .bin shards with pytorch_model.bin.index.json."""
    tensors = load_file(str(release / "model.safetensors"))
    (release / "model.safetensors").unlink()
    keys = sorted(tensors)
    weight_map = {}
    for n, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]), start=1):
        name = f"pytorch_model-{n:05d}-of-00002.bin"
        torch.save({k: tensors[k] for k in part}, release / name)
        weight_map.update(dict.fromkeys(part, name))
    (release / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _garbage_bin(release):
    (release / "model.safetensors").unlink()
    (release / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip" * 50)


def _config(release, data: bytes):
    (release / "config.json").write_bytes(data)


RELEASE_DAMAGE = {
    "missing shard": (lambda r: (_bin_shards(r), (r / "pytorch_model-00002-of-00002.bin").unlink()),
                      "pytorch_model-00002-of-00002.bin, which does not exist"),
    "shard index not JSON": (lambda r: (_bin_shards(r), (r / "pytorch_model.bin.index.json").write_text("{")),
                             "pytorch_model.bin.index.json"),
    "garbage .bin": (_garbage_bin, "pytorch_model.bin as PyTorch weights"),
    "truncated safetensors": (lambda r: (r / "model.safetensors").write_bytes((r / "model.safetensors").read_bytes()[:999]),
                              "model.safetensors: not a complete safetensors file"),
    "binary config.json": (lambda r: _config(r, b"\xff\xfe\x00garbage\x80"), "config.json is not a JSON config"),
    "config.json of another model": (lambda r: _config(r, json.dumps({"model_type": "llama"}).encode()),
                                     "model_type is 'llama'"),
    "no weights": (lambda r: (r / "model.safetensors").unlink(), "no weights in"),
}


@pytest.mark.parametrize("damage", list(RELEASE_DAMAGE))
def test_convert_refuses_a_damaged_release(refused, release, tmp_path, damage):
    make, message = RELEASE_DAMAGE[damage]
    make(release)
    refused("convert", release, tmp_path / "out", match=message, watch=[tmp_path])


def test_convert_refuses_an_output_under_a_file(refused, release, tmp_path):
    (tmp_path / "a-file").write_text("mine")
    refused("convert", release, tmp_path / "a-file" / "out", match="is a file", watch=[tmp_path])


def test_convert_force_keeps_a_users_folder(refused, release, tmp_path):
    users = tmp_path / "my-notes"
    users.mkdir()
    (users / "notes.txt").write_text("do not lose this")
    refused("convert", release, users, "--force", match="--force replaces only", watch=[tmp_path])
    refused("convert", release, users, match="already exists", watch=[tmp_path])
    assert (users / "notes.txt").read_text() == "do not lose this"


def test_convert_force_replaces_its_own_earlier_output(refused, release, tmp_path):
    assert refused.run("convert", release, tmp_path / "out").code == 0
    again = refused.run("convert", release, tmp_path / "out", "--force")
    assert again.code == 0, again.stderr
    assert json.loads((tmp_path / "out" / "edge_vlm.json").read_text())["source"] == \
        "converted from LP checkpoint LLaVA-Phi"


def test_quantized_loading_refuses_a_missing_layer_too(refused, checkpoint, tmp_path):
    """bitsandbytes loading (`--load-in-8bit`; 4-bit adds a machine-dependent note line) is as strict."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    edit_tensors(checkpoint, TENSOR_DAMAGE["missing decoder layer"][0])
    refused("ask", "--model", checkpoint, "--load-in-8bit", "hi", match="14 tensors missing", watch=[tmp_path])
