"""The checkpoint stage 1 (or SFT) starts from: a pretrained CLIP vision tower + a pretrained Phi + a fresh projector.

    python -m edge_vlm.train.compose --vision DIR --llm DIR --out checkpoints/llava-phi-start

`--vision`: a local transformers CLIP directory (e.g. openai/clip-vit-large-patch14-336; a full CLIPModel or a
CLIPVisionModel); `--llm`: a local transformers Phi directory with its tokenizer.json (e.g. microsoft/phi-2).
`<image>` is added to the tokenizer as one special token (id 50295 for Phi-2: no embedding resize, docs/prompts.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_vlm.errors import EdgeVLMError


def _spec_from(vision_config, text_config) -> dict:
    """A preset dict (edge_vlm.model.presets layout) with the shapes of the two pretrained models."""
    vision_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                   "image_size", "hidden_act", "layer_norm_eps", "projection_dim")
    text_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "hidden_act", "max_position_embeddings", "layer_norm_eps", "bos_token_id",
                 "eos_token_id")
    vision = {k: getattr(vision_config, k) for k in vision_keys}
    text = {k: getattr(text_config, k) for k in text_keys}
    rope = getattr(text_config, "rope_parameters", None) or {}
    # Phi-2's partial_rotary_factor (0.4) must survive: a config without it falls back to 0.5 silently (§7).
    text["partial_rotary_factor"] = rope.get("partial_rotary_factor", getattr(text_config, "partial_rotary_factor", None))
    text["rope_theta"] = rope.get("rope_theta", getattr(text_config, "rope_theta", None))
    if text["partial_rotary_factor"] is None or text["rope_theta"] is None:
        raise EdgeVLMError("the Phi config has no partial_rotary_factor / rope_theta")
    return {"vision": vision, "text": text, "image_token_id": None}


def compose_checkpoint(vision_dir: str | Path, llm_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a LLaVA-Phi checkpoint whose vision tower is `vision_dir`'s CLIP, whose language model and lm_head (with
    its bias) are `llm_dir`'s Phi, and whose projector is freshly initialised (seeded)."""
    from transformers import CLIPVisionModel, PhiForCausalLM

    from edge_vlm.model.checkpoint import CheckpointMeta, save_checkpoint
    from edge_vlm.model.modeling import build_model, make_config
    from edge_vlm.tokenizer import TextTokenizer

    for directory in (vision_dir, llm_dir):
        if not (Path(directory) / "config.json").is_file():
            raise EdgeVLMError(f"no config.json in {directory}: give a local transformers model directory")
    try:
        vision = CLIPVisionModel.from_pretrained(vision_dir)
        phi = PhiForCausalLM.from_pretrained(llm_dir)
    except (OSError, ValueError) as exc:
        raise EdgeVLMError(f"cannot load the pretrained parts: {exc}") from exc
    tokenizer = TextTokenizer.from_dir(llm_dir)
    spec = _spec_from(vision.config, phi.config)
    if tokenizer.image_token_id >= spec["text"]["vocab_size"]:
        raise EdgeVLMError(f"<image> id {tokenizer.image_token_id} does not fit Phi's vocabulary "
                           f"({spec['text']['vocab_size']})")
    model = build_model(make_config(spec, image_token_id=tokenizer.image_token_id), seed=seed)
    # transformers 5 flattened CLIPVisionModel (no .vision_model level); older versions keep it.
    model.model.vision_tower.load_state_dict(getattr(vision, "vision_model", vision).state_dict())
    model.model.language_model.load_state_dict(phi.model.state_dict())
    model.lm_head.load_state_dict(phi.lm_head.state_dict())
    meta = CheckpointMeta(template="phi-2_v0",
                          source=f"composed: vision {vision_dir}, language model {llm_dir}, projector seed {seed}")
    return save_checkpoint(model, tokenizer, out_dir, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", required=True, help="local CLIP directory")
    parser.add_argument("--llm", required=True, help="local Phi directory with tokenizer.json")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0, help="projector initialisation seed")
    args = parser.parse_args(argv)
    out = compose_checkpoint(args.vision, args.llm, args.out, seed=args.seed)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
