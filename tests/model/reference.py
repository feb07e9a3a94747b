"""An independent LLaVA-Phi forward pass from plain transformers modules (no Llava class), per reference §1:
CLIPVisionModel hidden state -2 without CLS -> Linear-GELU(erf)-Linear -> spliced into PhiForCausalLM's inputs_embeds."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, PhiConfig, PhiForCausalLM

from edge_vlm.model.presets import TINY


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
        """The same weights under transformers' Llava key names (reference §1)."""
        out = {f"model.vision_tower.{k}": v for k, v in self.clip.state_dict().items()}
        out.update({f"model.multi_modal_projector.linear_1.{k}": v for k, v in self.proj1.state_dict().items()})
        out.update({f"model.multi_modal_projector.linear_2.{k}": v for k, v in self.proj2.state_dict().items()})
        for key, value in self.phi.state_dict().items():
            out[key.replace("model.", "model.language_model.", 1) if key.startswith("model.") else key] = value
        return out

    def lp_state_dict(self) -> dict:
        """The same weights in the LP layout (reference §7): fused query_key_value laid out [heads, 3, head_dim]."""
        heads = self.phi.config.num_attention_heads
        out = {f"model.vision_tower.{k}": v for k, v in self.clip.state_dict().items()}
        out.update({f"model.mm_projector.0.{k}": v for k, v in self.proj1.state_dict().items()})
        out.update({f"model.mm_projector.2.{k}": v for k, v in self.proj2.state_dict().items()})
        phi = self.phi.state_dict()
        for key, value in phi.items():
            if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
                continue
            if ".self_attn.q_proj." in key:
                parts = [phi[key.replace("q_proj", name)] for name in ("q_proj", "k_proj", "v_proj")]
                head_dim = parts[0].shape[0] // heads
                stacked = torch.stack([p.reshape(heads, head_dim, *p.shape[1:]) for p in parts], dim=1)
                out[key.replace("q_proj", "query_key_value")] = stacked.reshape(3 * heads * head_dim, *parts[0].shape[1:])
                continue
            out[key] = value
        return out
