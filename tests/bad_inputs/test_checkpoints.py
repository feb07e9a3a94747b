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


# --- edge-vlm convert on a release whose config.json or weights hold a value edge-vlm cannot honour --------------
# The expected messages name the key as LLaVA-Phi's config.json spells it (Phi's keys at the top level, CLIP's under
# vision_config.vision_tower). The accepted values follow LLaVA-Phi's own code (llava_phi/mm_utils.py pads only for
# 'pad'; clip_encoder.py takes hidden_states[mm_vision_select_layer] and drops CLS for 'patch'; ProjectorConfig's
# default type is 'linear'; eval prompts wrap <image> in <im_start>/<im_end> when mm_use_im_start_end is true).

_DROP = object()


def _set(*where_key, value):
    """An edit of the LP config dict: the value at the nested key path, or the key removed (_DROP)."""
    def edit(config):
        *parents, key = where_key
        section = config
        for name in parents:
            section = section[name]
        if value is _DROP:
            del section[key]
        else:
            section[key] = value
    return edit


TOWER, PROJECTOR = ("vision_config", "vision_tower"), ("vision_config", "mm_projector")

CONFIG_DAMAGE = {
    # the sweep's cases: tracebacks from transformers / huggingface_hub before
    "layers as a string": (_set("num_hidden_layers", value="2"), "num_hidden_layers is '2', not a whole number"),
    "zero attention heads": (_set("num_attention_heads", value=0), "num_attention_heads is 0, not a whole number"),
    "rotary factor NaN": (_set("partial_rotary_factor", value=float("nan")), "partial_rotary_factor is nan"),
    "rotary factor as a string": (_set("partial_rotary_factor", value="0.4"), "partial_rotary_factor is '0.4'"),
    "image size as a string": (_set(*TOWER, "image_size", value="56"),
                               "vision_config.vision_tower.image_size is '56', not a whole number"),
    # the same rules as an edge-vlm config.json
    "vocab_size missing": (_set("vocab_size", value=_DROP), "vocab_size is missing"),
    "vocab_size huge": (_set("vocab_size", value=10**12), "vocab_size is 1000000000000, not a whole number"),
    "width not divisible by heads": (_set("num_attention_heads", value=3),
                                     "hidden_size 160 is not divisible by its 3 attention heads"),
    "vision width not divisible": (_set(*TOWER, "num_attention_heads", value=3),
                                   "vision_config.vision_tower.hidden_size 64 is not divisible by its 3"),
    "rope_theta infinite": (_set("rope_theta", value=float("inf")), "rope_theta is inf"),
    "rotary factor above 1": (_set("partial_rotary_factor", value=1.5), "partial_rotary_factor is 1.5"),
    "rotary factor true": (_set("partial_rotary_factor", value=True), "partial_rotary_factor is True"),
    "rope_parameters a list": (_set("rope_parameters", value=[0.4]), "rope_parameters is [0.4], not an object"),
    "norm epsilon as a string": (_set("layer_norm_eps", value="1e-05"), "layer_norm_eps is '1e-05'"),
    "vision norm epsilon NaN": (_set(*TOWER, "layer_norm_eps", value=float("nan")),
                                "vision_config.vision_tower.layer_norm_eps is nan"),
    "unknown activation": (_set("hidden_act", value="gelu_neww"), "hidden_act is 'gelu_neww', not an activation"),
    "zero key/value heads": (_set("num_key_value_heads", value=0), "num_key_value_heads is 0"),
    # LLaVA-Phi's own settings: only what edge-vlm's model reproduces exactly
    "LLaVA-NeXT anyres": (_set("image_aspect_ratio", value="anyres"),
                          "image_aspect_ratio is 'anyres'; accepted: 'pad', 'square'"),
    "aspect not a string": (_set("image_aspect_ratio", value=1), "image_aspect_ratio is 1; accepted: 'pad', 'square'"),
    "linear projector": (_set(*PROJECTOR, "mm_projector_type", value="linear"), "mm_projector_type is 'linear'"),
    "projector type missing": (_set(*PROJECTOR, "mm_projector_type", value=_DROP),
                               "mm_projector_type is missing (LLaVA-Phi reads 'linear')"),
    "projector section missing": (_set("vision_config", "mm_projector", value=_DROP),
                                  "no vision_config.mm_projector section"),
    "projector width contradicts": (_set(*PROJECTOR, "mm_hidden_size", value=1024),
                                    "vision_config.mm_projector.mm_hidden_size is 1024"),
    "last vision layer": (_set(*TOWER, "mm_vision_select_layer", value=-1), "mm_vision_select_layer is -1"),
    "select layer as a string": (_set(*TOWER, "mm_vision_select_layer", value="-2"),
                                 "mm_vision_select_layer is '-2'"),
    "CLS kept": (_set(*TOWER, "mm_vision_select_feature", value="cls_patch"),
                 "mm_vision_select_feature is 'cls_patch'"),
    "image start/end tokens": (_set("mm_use_im_start_end", value=True), "mm_use_im_start_end is True"),
    "scaled rope": (_set("rope_scaling", value={"type": "linear", "factor": 2.0}), "rope_scaling is {'type': 'linear'"),
    "qk_layernorm as a string": (_set("qk_layernorm", value="false"), "qk_layernorm is 'false'"),
    "tied output layer": (_set("tie_word_embeddings", value=True), "tie_word_embeddings is True"),
    "bos id as a string": (_set("bos_token_id", value="1"), "bos_token_id is '1'"),
    "grey-level tower": (_set(*TOWER, "num_channels", value=1), "vision_config.vision_tower.num_channels is 1"),
    "vocabulary smaller than the tokenizer": (_set("vocab_size", value=16),
                                              "tokens, more than the vocab_size 16 of config.json"),
}


def edit_release_config(release, edit):
    config = json.loads((release / "config.json").read_text())
    edit(config)
    (release / "config.json").write_text(json.dumps(config))  # NaN / Infinity as Python's json (and LLaVA's) write


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_convert_refuses_a_config_value_it_cannot_honour(refused, release, tmp_path, damage):
    edit, message = CONFIG_DAMAGE[damage]
    edit_release_config(release, edit)
    outcome = refused("convert", release, tmp_path / "out", match=message, watch=[tmp_path])
    if damage != "vocabulary smaller than the tokenizer":
        assert f"{release / 'config.json'}: " in outcome.stderr or "no vision_config" in outcome.stderr
    assert not (tmp_path / "out").exists()


def _poison(tensors, key, value):
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[3] = value
    return tensors


@pytest.mark.parametrize("key, value, form", [
    ("model.mm_projector.0.weight", float("nan"), "safetensors"),
    ("model.layers.1.self_attn.query_key_value.bias", float("inf"), "safetensors-shards"),
    ("lm_head.weight", float("-inf"), "bin"),
])
def test_convert_refuses_weights_with_nan_or_infinity(refused, tmp_path, key, value, form):
    """The converted checkpoint would be refused by ask (load_checkpoint's check): convert refuses it first, naming
    the tensor as the release names it and the file that holds it, and writes nothing."""
    tensors = _poison(fuse_qkv(released_tensors()), key, value)
    release = write_released(tmp_path / "LLaVA-Phi", small_tokenizer(), tensors, form=form)
    outcome = refused("convert", release, tmp_path / "out", match=f"the weight {key} holds NaN or infinity",
                      watch=[tmp_path])
    assert str(release) in outcome.stderr and (".safetensors" in outcome.stderr or ".bin" in outcome.stderr)


@pytest.mark.parametrize("edit, aspect, factor", [
    # LLaVA-Phi reads a missing image_aspect_ratio as None: no padding (mm_utils.process_images), i.e. 'square'
    (_set("image_aspect_ratio", value=_DROP), "square", 0.4),
    (_set("image_aspect_ratio", value="square"), "square", 0.4),
    # a config without the top-level factor is read as transformers 4.36's PhiConfig reads it: 0.5
    (_set("partial_rotary_factor", value=_DROP), "pad", 0.5),
    # hidden_states of a 3-layer tower has 4 entries: index 2 is the second-to-last, the same as -2
    (_set(*TOWER, "mm_vision_select_layer", value=2), "pad", 0.4),
])
def test_convert_reads_odd_but_valid_settings_as_llava_phi_does(refused, release, tmp_path, edit, aspect, factor):
    edit_release_config(release, edit)
    outcome = refused.run("convert", release, tmp_path / "out")
    assert outcome.code == 0, outcome.stderr
    assert json.loads((tmp_path / "out" / "edge_vlm.json").read_text())["image"]["aspect"] == aspect
    text = json.loads((tmp_path / "out" / "config.json").read_text())["text_config"]
    assert text["rope_parameters"]["partial_rotary_factor"] == factor
