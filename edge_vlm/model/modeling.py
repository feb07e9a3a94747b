"""LLaVA-Phi as transformers' Llava with a Phi text model, keeping Phi-2's biased lm_head.

From transformers 4.52 on, `LlavaForConditionalGeneration.lm_head` has no bias, so Phi-2's `lm_head.bias` would be
dropped silently and every logit would shift (docs/model.md). This subclass only changes that one layer.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, PhiConfig
from transformers.utils import logging as hf_logging

from edge_vlm.errors import EdgeVLMError
from edge_vlm.image_tokens import TokenSelection
from edge_vlm.model.presets import get_preset, num_image_tokens
from edge_vlm.model.token_selection import vision_features

# transformers draws progress bars for every load and save of a small file; our commands report their own progress
# and keep stdout for answers.
hf_logging.disable_progress_bar()


class LlavaPhiForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA-Phi: CLIP vision tower -> 2-layer GELU MLP projector -> Phi, with a biased lm_head."""

    # Phi-2 does not tie embeddings; the parent's tie declaration would otherwise share lm_head with embed_tokens.
    _tied_weights_keys: dict = {}

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        text = config.text_config
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=True)
        # None: every patch token, the paper's model. A run-time setting (set_token_selection), never saved with
        # the weights: a checkpoint always holds the full model.
        self.token_selection: TokenSelection | None = None
        self.post_init()

    @property
    def patch_tokens(self) -> int:
        """The vision tower's patch tokens N ((image size / patch size)^2)."""
        return num_image_tokens(self.config.vision_config.to_dict())

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the language model receives per image: N, or K under a token selection."""
        return self.patch_tokens if self.token_selection is None else self.token_selection.image_tokens

    def set_token_selection(self, selection: TokenSelection | None) -> None:
        """Give the language model K of the N patch tokens (edge_vlm.image_tokens); None restores all N. Applies to
        vision_features / image_features, which the engines, the export and bench use; transformers' own
        forward(pixel_values=...) (training) still splices all N."""
        if selection is not None and selection.image_tokens >= self.patch_tokens:
            raise EdgeVLMError(f"a selection of {selection.image_tokens} image tokens needs fewer than the model's "
                               f"{self.patch_tokens}")
        self.token_selection = selection

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B,3,S,S] -> what the projector reads [B, N or K, vision hidden]: the vision tower's hidden
        state `vision_feature_layer` (LLaVA's -2), CLS dropped, in patch order (edge_vlm.model.token_selection)."""
        return vision_features(self.model.vision_tower, pixel_values, self.config.vision_feature_layer,
                               self.token_selection)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B,3,S,S] -> projected image features [B, N or K, hidden]."""
        return self.model.multi_modal_projector(self.vision_features(pixel_values))


def make_config(preset: str | dict = "llava-phi-2", image_token_id: int | None = None, vocab_size: int | None = None,
                **text_overrides) -> LlavaConfig:
    """A LlavaConfig for a preset. `image_token_id` / `vocab_size` fit the config to a tokenizer."""
    spec = get_preset(preset) if isinstance(preset, str) else preset
    vision = CLIPVisionConfig(**spec["vision"])
    text_kwargs = dict(spec["text"])
    text_kwargs.update(text_overrides)
    if vocab_size is not None:
        text_kwargs["vocab_size"] = vocab_size
    # rope settings go in explicitly: a config that loses partial_rotary_factor falls back to 0.5 silently (§7).
    rope = {"rope_type": "default", "rope_theta": float(text_kwargs.pop("rope_theta")),
            "partial_rotary_factor": float(text_kwargs.pop("partial_rotary_factor"))}
    text = PhiConfig(**text_kwargs, rope_parameters=rope)
    token = image_token_id if image_token_id is not None else spec.get("image_token_id")
    if token is None:
        raise EdgeVLMError("this preset needs image_token_id from its tokenizer")
    if token >= text.vocab_size:
        raise EdgeVLMError(f"image token id {token} does not fit the vocabulary ({text.vocab_size})")
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=token,
        image_seq_length=num_image_tokens(spec["vision"]),
        projector_hidden_act="gelu",  # exact (erf) GELU, as LP's mlp2x_gelu
        vision_feature_select_strategy="default",  # drop CLS
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
        architectures=["LlavaPhiForConditionalGeneration"],
    )


def build_model(config: LlavaConfig, seed: int | None = 0) -> LlavaPhiForConditionalGeneration:
    """A randomly initialised model (fp32, eval mode)."""
    if seed is not None:
        torch.manual_seed(seed)
    return LlavaPhiForConditionalGeneration(config).eval()
