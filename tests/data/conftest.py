"""Fixtures of the data tests: one small synthetic world and tokenizers trained offline."""

from __future__ import annotations

import pytest

from edge_vlm.data.synth import write_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A small synthetic world written by the real writer (140 eval questions: 20 per type)."""
    out = tmp_path_factory.mktemp("world") / "w"
    write_world(out, seed=7, train=60, eval_size=140, sft=12, text_only=8, image_size=112, progress=False)
    return out


@pytest.fixture(scope="session")
def world_tokenizer(world):
    """A byte-level BPE trained on the world's own text (as the built-in model's tokenizer is), so that its merges
    are long and would cross segment boundaries if anything could."""
    import json

    from edge_vlm.prompting import PHI2_SYSTEM
    from edge_vlm.tokenizer import train_bpe_tokenizer

    texts = [PHI2_SYSTEM + " USER: ASSISTANT:"]
    for name in ("pretrain.json", "finetune.json", "sft.json"):
        for record in json.loads((world / name).read_text()):
            texts.extend(message["value"] for message in record["conversations"])
    return train_bpe_tokenizer(texts * 3, vocab_size=1500)
