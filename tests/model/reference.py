"""What the model tests compare against, built without the code under test.

- `PlainLlavaPhi`: an independent LLaVA-Phi forward pass from plain transformers modules (no Llava class):
  CLIPVisionModel's second-to-last hidden state without CLS -> Linear-GELU(erf)-Linear -> spliced into
  PhiForCausalLM's inputs_embeds.
- `write_released`: a checkpoint folder laid out as LLaVA-Phi was released (docs/checkpoint-layout.md). Every tensor
  is named with the literal key strings of that layout, never with keys taken from an installed transformers'
  `state_dict()`: that is how a rename by the library (such as transformers 5 dropping CLIP's `vision_model.` level)
  gets caught.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, PhiConfig, PhiForCausalLM

from edge_vlm.model.presets import TINY

# Where each part of a released LLaVA-Phi checkpoint lives, written out literally (docs/checkpoint-layout.md), so the
# reference does not depend on how any transformers version names its modules in a checkpoint.
RELEASED_VISION = "model.vision_tower.vision_model."
RELEASED_PROJECTOR = {"model.mm_projector.0.": "proj1", "model.mm_projector.2.": "proj2"}
RELEASED_PHI = ("model.embed_tokens.", "model.layers.", "model.final_layernorm.", "lm_head.")


class PlainLlavaPhi(nn.Module):
    def __init__(self, vocab_size: int, image_token_id: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.image_token_id = image_token_id
        self.clip = CLIPVisionModel(CLIPVisionConfig(**TINY["vision"]))
        text = dict(TINY["text"], vocab_size=vocab_size)
        rope = {"rope_type": "default", "rope_theta": text.pop("rope_theta"),
                "partial_rotary_factor": text.pop("partial_rotary_factor")}
        self.phi = PhiForCausalLM(PhiConfig(**text, rope_parameters=rope))
        d, h = TINY["vision"]["hidden_size"], TINY["text"]["hidden_size"]
        self.proj1, self.proj2 = nn.Linear(d, h), nn.Linear(h, h)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # draw every weight, biases and the lm_head bias included
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)

    def forward(self, input_ids, pixel_values, attention_mask):
        hidden = self.clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        features = self.proj2(nn.functional.gelu(self.proj1(hidden)))
        is_image = input_ids == self.image_token_id
        embeds = self.phi.model.embed_tokens(input_ids.masked_fill(is_image, 0)).clone()
        embeds[is_image] = features.reshape(-1, features.shape[-1])
        return self.phi(inputs_embeds=embeds, attention_mask=attention_mask).logits

    def llava_state_dict(self) -> dict:
        """The same weights under transformers' Llava key names."""
        out = {f"model.vision_tower.{k}": v for k, v in self.clip.state_dict().items()}
        out.update({f"model.multi_modal_projector.linear_1.{k}": v for k, v in self.proj1.state_dict().items()})
        out.update({f"model.multi_modal_projector.linear_2.{k}": v for k, v in self.proj2.state_dict().items()})
        for key, value in self.phi.state_dict().items():
            out[key.replace("model.", "model.language_model.", 1) if key.startswith("model.") else key] = value
        return out

    def load_released(self, tensors: dict[str, torch.Tensor]) -> PlainLlavaPhi:
        """Take every weight from a released checkpoint's tensors (q/k/v split), by the literal prefixes above; each
        module must receive exactly its own tensors (strict)."""
        parts: dict[str, dict] = {"clip": {}, "proj1": {}, "proj2": {}, "phi": {}}
        for key, value in tensors.items():
            if key.startswith(RELEASED_VISION):
                parts["clip"][key[len(RELEASED_VISION):]] = value
            elif key.startswith(tuple(RELEASED_PROJECTOR)):
                prefix = next(p for p in RELEASED_PROJECTOR if key.startswith(p))
                parts[RELEASED_PROJECTOR[prefix]][key[len(prefix):]] = value
            elif key.startswith(RELEASED_PHI):  # PhiForCausalLM names these tensors as the release does
                parts["phi"][key] = value
            else:
                raise KeyError(f"not a released LLaVA-Phi tensor name: {key}")
        for name, state in parts.items():
            getattr(self, name).load_state_dict(state, strict=True)
        return self


# --- a checkpoint as LLaVA-Phi was released, at the tiny test shapes ---------------------------------------------

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
