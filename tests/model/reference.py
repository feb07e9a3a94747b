"""An independent LLaVA-Phi forward pass from plain transformers modules (no Llava class): CLIPVisionModel's
second-to-last hidden state without CLS -> Linear-GELU(erf)-Linear -> spliced into PhiForCausalLM's inputs_embeds."""

from __future__ import annotations

import torch
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
