"""The converter on checkpoints written the way LLaVA-Phi was released.

The fixture names every tensor with the literal key strings of the released layout (docs/checkpoint-layout.md),
never with keys taken from an installed transformers' `state_dict()`: that is how a rename by the library (such as
transformers 5 dropping CLIP's `vision_model.` level) gets caught. The expected logits come from plain transformers
modules (`CLIPVisionModel` + `PhiForCausalLM`) loaded with the same tensors by the test's own mapping
(tests/model/reference.py).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from edge_vlm.errors import EdgeVLMError
from edge_vlm.model.checkpoint import load_checkpoint
from edge_vlm.model.convert import convert_lp_checkpoint, split_fused_qkv
from edge_vlm.model.factory import small_tokenizer
from edge_vlm.prompting import inference_prompt
from tests.conftest import run_cli
from tests.model.reference import PlainLlavaPhi

VOCAB = 1024  # config.json's vocab_size; the test tokenizer has fewer entries, as Phi-2's 50295 < 51200
HEADS = 2  # Phi's attention heads in the tiny shapes below (head_dim 80)

# config.json of a released LLaVA-Phi checkpoint as transformers 4.36 wrote it, at the tiny test shapes: Phi's keys
# and the rope settings at the top level, the CLIP tower and projector under vision_config.
LP_CONFIG = {
    "architectures": ["LlavaPhiForCausalLM"],
    "model_type": "llava_phi",
    "vocab_size": VOCAB,
    "hidden_size": 160,
    "intermediate_size": 320,
    "num_hidden_layers": 2,
    "num_attention_heads": HEADS,
    "num_key_value_heads": HEADS,
    "hidden_act": "gelu_new",
    "max_position_embeddings": 512,
    "layer_norm_eps": 1e-05,
    "partial_rotary_factor": 0.4,
    "rope_theta": 10000.0,
    "qk_layernorm": False,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.36.2",
    "image_aspect_ratio": "pad",
    "vision_config": {
        "vision_tower": {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
            "patch_size": 14, "image_size": 56, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
            "projection_dim": 64, "num_channels": 3, "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
        },
        "mm_projector": {"mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 64, "hidden_size": 160},
    },
}


def released_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the released layout (attention q/k/v split) with its shape at the tiny test shapes."""
    shapes = {
        "model.vision_tower.vision_model.embeddings.class_embedding": (64,),
        "model.vision_tower.vision_model.embeddings.patch_embedding.weight": (64, 3, 14, 14),
        "model.vision_tower.vision_model.embeddings.position_embedding.weight": (17, 64),
        "model.vision_tower.vision_model.pre_layrnorm.weight": (64,),
        "model.vision_tower.vision_model.pre_layrnorm.bias": (64,),
        "model.vision_tower.vision_model.post_layernorm.weight": (64,),
        "model.vision_tower.vision_model.post_layernorm.bias": (64,),
        "model.mm_projector.0.weight": (160, 64),
        "model.mm_projector.0.bias": (160,),
        "model.mm_projector.2.weight": (160, 160),
        "model.mm_projector.2.bias": (160,),
        "model.embed_tokens.weight": (VOCAB, 160),
        "model.final_layernorm.weight": (160,),
        "model.final_layernorm.bias": (160,),
        "lm_head.weight": (VOCAB, 160),
        "lm_head.bias": (VOCAB,),
    }
    for i in range(3):
        for name, shape in [
            ("self_attn.q_proj.weight", (64, 64)), ("self_attn.q_proj.bias", (64,)),
            ("self_attn.k_proj.weight", (64, 64)), ("self_attn.k_proj.bias", (64,)),
            ("self_attn.v_proj.weight", (64, 64)), ("self_attn.v_proj.bias", (64,)),
            ("self_attn.out_proj.weight", (64, 64)), ("self_attn.out_proj.bias", (64,)),
            ("layer_norm1.weight", (64,)), ("layer_norm1.bias", (64,)),
            ("mlp.fc1.weight", (128, 64)), ("mlp.fc1.bias", (128,)),
            ("mlp.fc2.weight", (64, 128)), ("mlp.fc2.bias", (64,)),
            ("layer_norm2.weight", (64,)), ("layer_norm2.bias", (64,)),
        ]:
            shapes[f"model.vision_tower.vision_model.encoder.layers.{i}.{name}"] = shape
    for i in range(2):
        for name, shape in [
            ("self_attn.q_proj.weight", (160, 160)), ("self_attn.q_proj.bias", (160,)),
            ("self_attn.k_proj.weight", (160, 160)), ("self_attn.k_proj.bias", (160,)),
            ("self_attn.v_proj.weight", (160, 160)), ("self_attn.v_proj.bias", (160,)),
            ("self_attn.dense.weight", (160, 160)), ("self_attn.dense.bias", (160,)),
            ("mlp.fc1.weight", (320, 160)), ("mlp.fc1.bias", (320,)),
            ("mlp.fc2.weight", (160, 320)), ("mlp.fc2.bias", (160,)),
            ("input_layernorm.weight", (160,)), ("input_layernorm.bias", (160,)),
        ]:
            shapes[f"model.layers.{i}.{name}"] = shape
    return shapes


def released_tensors(seed: int = 7) -> dict[str, torch.Tensor]:
    """Random tensors for every released key (LayerNorms and biases drawn too, so each one matters)."""
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator) * 0.05 for k, shape in released_shapes().items()}


def fuse_qkv(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformers-4.36 form of Phi's attention: one `query_key_value` whose rows are, head by head, that
    head's q rows, then its k rows, then its v rows."""
    out = {k: v for k, v in tensors.items() if not (k.startswith("model.layers.") and "_proj." in k)}
    for i in range(2):
        for kind in ("weight", "bias"):
            q, k, v = (tensors[f"model.layers.{i}.self_attn.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj"))
            head_dim = q.shape[0] // HEADS
            rows = [part[h * head_dim:(h + 1) * head_dim] for h in range(HEADS) for part in (q, k, v)]
            out[f"model.layers.{i}.self_attn.query_key_value.{kind}"] = torch.cat(rows)
    return out


def write_weights(directory, tensors: dict[str, torch.Tensor], form: str) -> None:
    """`form`: safetensors | bin (one file), or safetensors-shards | bin-shards (two files + the index)."""
    if form == "safetensors":
        save_file(tensors, str(directory / "model.safetensors"))
        return
    if form == "bin":
        torch.save(tensors, directory / "pytorch_model.bin")
        return
    keys = sorted(tensors)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    suffix = "safetensors" if form == "safetensors-shards" else "bin"
    stem = "model" if suffix == "safetensors" else "pytorch_model"
    weight_map = {}
    for n, half in enumerate(halves, start=1):
        name = f"{stem}-{n:05d}-of-00002.{suffix}"
        part = {k: tensors[k] for k in half}
        if suffix == "safetensors":
            save_file(part, str(directory / name))
        else:
            torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(half, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2))


def write_released(directory, tokenizer, tensors, form="safetensors", gpt2_files=False, config=None):
    """A released-style checkpoint folder: config.json, weights in `form`, and the tokenizer as tokenizer.json or
    (`gpt2_files`) as GPT-2's vocab.json + merges.txt."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config or LP_CONFIG, indent=2))
    write_weights(directory, {k: v.contiguous() for k, v in tensors.items()}, form)
    if gpt2_files:
        tokenizer.backend.model.save(str(directory))
        (directory / "added_tokens.json").write_text("{}")
    else:
        tokenizer.backend.save(str(directory / "tokenizer.json"))
    return directory


def reference_and_converted_logits(tensors, converted_dir):
    """(reference logits, converted model's logits, converted model, its tokenizer) on one image + prompt."""
    model, tokenizer, meta = load_checkpoint(converted_dir)
    reference = PlainLlavaPhi(vocab_size=VOCAB, image_token_id=tokenizer.image_token_id).load_released(tensors).eval()
    ids = torch.tensor([tokenizer.encode_prompt(inference_prompt("Is there a dog?"), model.num_image_tokens)])
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = reference(ids, pixels, mask)
        got = model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    return expected, got, model, meta


VARIANTS = {
    # name: (fused qkv, weight form, vision prefix, GPT-2 tokenizer files, a saved position_ids buffer)
    "fused-safetensors": (True, "safetensors", None, False, False),
    "split-safetensors": (False, "safetensors", None, False, False),
    "fused-safetensors-shards": (True, "safetensors-shards", None, False, False),
    "fused-bin-shards": (True, "bin-shards", None, True, True),
    "split-bin": (False, "bin", None, False, True),
    "llava15-nesting": (True, "safetensors", "model.vision_tower.vision_tower.vision_model.", False, False),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_released_checkpoint_converts_to_the_reference_logits(tmp_path, variant):
    fused, form, vision_prefix, gpt2_files, position_ids = VARIANTS[variant]
    tokenizer = small_tokenizer()
    assert len(tokenizer) <= VOCAB
    tensors = released_tensors()
    on_disk = fuse_qkv(tensors) if fused else dict(tensors)
    if vision_prefix:
        on_disk = {k.replace("model.vision_tower.vision_model.", vision_prefix): v for k, v in on_disk.items()}
    if position_ids:  # transformers < 4.31 saved CLIP's position ids; a buffer the converter must drop
        on_disk["model.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    assert ("model.layers.0.self_attn.query_key_value.weight" in on_disk) == fused
    src = write_released(tmp_path / "LLaVA-Phi-3B", tokenizer, on_disk, form=form, gpt2_files=gpt2_files)

    convert_lp_checkpoint(src, tmp_path / "out")
    expected, got, model, meta = reference_and_converted_logits(tensors, tmp_path / "out")

    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    assert model.config.text_config.rope_parameters["partial_rotary_factor"] == 0.4
    assert torch.equal(model.lm_head.bias, tensors["lm_head.bias"])
    assert meta.image.aspect == "pad" and meta.source == "converted from LP checkpoint LLaVA-Phi-3B"
    if gpt2_files:  # the tokenizer rebuilt from vocab.json + merges.txt encodes as the original does
        loaded = load_checkpoint(tmp_path / "out")[1]
        text = inference_prompt("What colour is the square?")
        assert loaded.encode(text) == tokenizer.encode(text)
    for path in (tmp_path / "out").iterdir():  # nothing written records where the user keeps files
        assert str(tmp_path) not in path.read_text(errors="replace"), path


def test_the_logit_check_catches_a_wrong_qkv_layout(tmp_path):
    """The comparison above can fail: the same tensors fused in the other plausible order (all q rows, then all k,
    then all v) convert without complaint, since the shapes agree, but give other logits."""
    tensors = released_tensors()
    on_disk = fuse_qkv(tensors)
    for i in range(2):
        for kind in ("weight", "bias"):
            on_disk[f"model.layers.{i}.self_attn.query_key_value.{kind}"] = torch.cat(
                [tensors[f"model.layers.{i}.self_attn.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj")])
    src = write_released(tmp_path / "lp", small_tokenizer(), on_disk)
    convert_lp_checkpoint(src, tmp_path / "out")
    expected, got, _, _ = reference_and_converted_logits(tensors, tmp_path / "out")
    assert (got - expected).abs().max() > 1e-3


def test_fused_qkv_split_follows_the_head_interleaved_layout():
    heads, head_dim, hidden = 2, 3, 4
    # Row r of the fused weight is (head, j, d) in row-major order; fill each row with its own coordinates.
    fused = torch.zeros(heads * 3 * head_dim, hidden)
    for h in range(heads):
        for j in range(3):
            for d in range(head_dim):
                fused[(h * 3 + j) * head_dim + d] = 100 * j + 10 * h + d
    q, k, v = split_fused_qkv(fused, heads)
    for j, part in enumerate((q, k, v)):
        for h in range(heads):
            for d in range(head_dim):
                assert part[h * head_dim + d, 0] == 100 * j + 10 * h + d


def test_unknown_layout_is_refused_with_the_keys_listed(tmp_path):
    tensors = fuse_qkv(released_tensors())
    tensors["model.something_new.weight"] = torch.zeros(2)
    del tensors["lm_head.bias"]
    src = write_released(tmp_path / "lp", small_tokenizer(), tensors)
    with pytest.raises(EdgeVLMError) as error:
        convert_lp_checkpoint(src, tmp_path / "out")
    assert "lm_head.bias" in str(error.value) and "model.something_new.weight" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_convert_cli_errors_are_one_line(tmp_path):
    result = run_cli("convert", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "not found" in result.stderr
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = run_cli("convert", str(tmp_path / "plain"), str(tmp_path / "out"))
    assert result.returncode == 2 and "llava_phi" in result.stderr
