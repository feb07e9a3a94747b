"""Which parameters change after one optimizer step of each stage, read back from the saved safetensors files."""

from __future__ import annotations

import re

import pytest
from safetensors.torch import load_file

from edge_vlm.train.loop import train

VISION, PROJECTOR, LLM, HEAD = "model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head."


def _changed(before_dir, after_dir) -> set[str]:
    before = load_file(str(before_dir / "model.safetensors"))
    after = load_file(str(after_dir / "model.safetensors"))
    assert before.keys() == after.keys()
    return {name for name in before if not before[name].equal(after[name])}


def _names(checkpoint, *prefixes) -> set[str]:
    return {n for n in load_file(str(checkpoint / "model.safetensors")) if n.startswith(prefixes)}


def _last_vision_layer_and_post_norm(checkpoint) -> set[str]:
    names = _names(checkpoint, VISION)
    last = max(int(m.group(1)) for n in names if (m := re.search(r"encoder\.layers\.(\d+)\.", n)))
    return {n for n in names if f"encoder.layers.{last}." in n or "post_layernorm" in n}


@pytest.mark.parametrize("stage, options, parts", [
    ("sft", {}, (LLM, HEAD)),
    ("pretrain", {}, (PROJECTOR,)),
    ("pretrain", {"train_lm_head": True}, (PROJECTOR, HEAD)),
    ("finetune", {}, (PROJECTOR, LLM, HEAD)),
    ("finetune", {"train_vision_tower": True}, (VISION, PROJECTOR, LLM, HEAD)),
], ids=["sft", "pretrain", "pretrain+lm_head(LP)", "finetune", "finetune+vision(LP)"])
def test_one_step_changes_exactly_the_stages_parts(make_config, tiny_checkpoint, stage, options, parts):
    config = make_config(stage=stage, max_steps=1, **options)
    result = train(config)
    changed = _changed(tiny_checkpoint, result.final_dir)
    expected = _names(tiny_checkpoint, *parts)
    if VISION in parts:  # LLaVA reads hidden_states[-2]: the last layer and post_layernorm get no gradient
        unused = _last_vision_layer_and_post_norm(tiny_checkpoint)
        assert unused and not unused & changed
        expected -= unused
        # CLIP's key bias adds q.b to every score of a query: softmax ignores it, so its gradient is zero up to
        # rounding and one Adam step may or may not move it.
        key_bias = {n for n in expected if n.startswith(VISION) and n.endswith("k_proj.bias")}
        changed |= key_bias
    assert changed == expected, (sorted(changed - expected)[:5], sorted(expected - changed)[:5])


def test_lora_step_changes_only_the_adapted_linears_and_the_projector(make_config, tiny_checkpoint):
    config = make_config(stage="finetune", max_steps=1, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    result = train(config)
    changed = _changed(tiny_checkpoint, result.final_dir)
    adapted = {n for n in _names(tiny_checkpoint, LLM)
               if re.search(r"layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|dense)|mlp\.(fc1|fc2))\.weight$", n)}
    assert adapted and changed == adapted | _names(tiny_checkpoint, PROJECTOR)
