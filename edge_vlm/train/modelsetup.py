"""The model a stage starts from (a checkpoint, or a preset + tokenizer for from-scratch runs) and what it trains."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from edge_vlm.configfile import parse_json, read_text_file
from edge_vlm.errors import EdgeVLMError
from edge_vlm.prompting import EOS_TEXT, IMAGE_PLACEHOLDER, PHI2_SYSTEM
from edge_vlm.tokenizer import TextTokenizer, train_bpe_tokenizer
from edge_vlm.train.config import TrainConfig

# Parameter-name prefixes of each trainable part (transformers' Llava names, see edge_vlm.model.modeling).
PART_PREFIXES = {
    "vision_tower": "model.vision_tower.",
    "projector": "model.multi_modal_projector.",
    "llm": "model.language_model.",
    "lm_head": "lm_head.",
}


def resolve_preset(name: str) -> dict:
    """A model preset by name (edge_vlm.model.presets)."""
    from edge_vlm.model.presets import PRESETS

    if name in PRESETS:
        return PRESETS[name]
    raise EdgeVLMError(f"unknown model_preset {name!r}; choose one of {sorted(PRESETS)}")


def corpus_texts(paths: list[str]) -> list[str]:
    """One text per conversation of LLaVA / ShareGPT JSON files, laid out like the phi-2_v0 template (system prompt,
    roles, a space before each answer), so the BPE merges see words with the spaces and frequencies of training."""
    texts = []
    for path in paths:
        file = Path(path)
        text = read_text_file(file, "tokenizer_corpus file", kind="JSON")
        if file.suffix == ".jsonl":
            records = [parse_json(line, file, "tokenizer_corpus file", first_line=number)
                       for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        else:
            records = parse_json(text, file, "tokenizer_corpus file")
        if not isinstance(records, list) or not all(
                isinstance(r, dict) and isinstance(r.get("conversations", []), list)
                and all(isinstance(t, dict) for t in r.get("conversations", [])) for r in records):
            raise EdgeVLMError(f"{file}: a tokenizer_corpus file is LLaVA or ShareGPT JSON: a list of records, each "
                               "with a 'conversations' list of turns")
        for record in records:
            parts = [PHI2_SYSTEM]
            for turn in record.get("conversations", []):
                value = str(turn.get("value", "")).replace(IMAGE_PLACEHOLDER, "").strip()
                role = "USER:" if turn.get("from") in ("human", "user") else "ASSISTANT:"
                parts.append(f"{role} {value}" + (EOS_TEXT if role == "ASSISTANT:" else ""))
            texts.append(" ".join(parts))
    if not texts:
        raise EdgeVLMError(f"no conversation in {paths}: cannot train a tokenizer")
    return texts


def build_tokenizer(config: TrainConfig) -> TextTokenizer:
    if config.tokenizer is not None:
        return TextTokenizer.from_dir(config.tokenizer)
    corpus = config.tokenizer_corpus or [config.data_path]
    return train_bpe_tokenizer(corpus_texts(corpus), vocab_size=config.tokenizer_vocab_size)


def load_start(config: TrainConfig, quantization_config=None, device_map=None, log=print):
    """(model, tokenizer, meta) the stage starts from. Dropout-free presets make the run deterministic per seed."""
    from edge_vlm.model.checkpoint import CheckpointMeta, load_checkpoint
    from edge_vlm.model.modeling import build_model, make_config

    if config.init_from is not None:
        kwargs = {}
        if quantization_config is not None:
            kwargs = {"quantization_config": quantization_config, "device_map": device_map}
        model, tokenizer, meta = load_checkpoint(config.init_from, **kwargs)
        if meta.random_weights:
            log(f"note: {config.init_from} holds random weights (edge_vlm.json says so)")
        return model, tokenizer, meta
    tokenizer = build_tokenizer(config)
    preset = resolve_preset(config.model_preset)
    # Fit the vocabulary to the tokenizer, rounded up to a multiple of 64 (Phi-2 pads its 50295 tokens to 51200 too).
    vocab = preset["text"]["vocab_size"]
    if config.model_preset != "llava-phi-2":
        vocab = -(-len(tokenizer) // 64) * 64
    model = build_model(make_config(preset, image_token_id=tokenizer.image_token_id, vocab_size=vocab), seed=config.seed)
    meta = CheckpointMeta(source=f"trained from scratch: preset {config.model_preset}, seed {config.seed}")
    return model, tokenizer, meta


def part_of(name: str) -> str:
    """Which part (PARTS) a parameter name belongs to. peft's wrapper prefixes are looked through."""
    name = re.sub(r"^(base_model\.model\.)", "", name)
    for part, prefix in PART_PREFIXES.items():
        if name.startswith(prefix):
            return part
    raise EdgeVLMError(f"internal: parameter {name} belongs to no known part")


def unused_vision_parameters(model) -> set[str]:
    """Vision-tower parameters that cannot get a gradient: LLaVA reads hidden_states[-2], so the last encoder layer and
    post_layernorm never reach the output. Freezing them keeps DDP from waiting for their gradients."""
    layer = model.config.vision_feature_layer
    num_layers = model.config.vision_config.num_hidden_layers
    used = num_layers + 1 + layer if layer < 0 else layer  # hidden_states[i] = output of encoder layer i-1
    unused = set()
    for name, _ in model.named_parameters():
        match = re.search(r"vision_tower\..*encoder\.layers\.(\d+)\.", name)  # peft may insert a wrapper in between
        if (match and int(match.group(1)) >= used) or "post_layernorm" in name:
            unused.add(name)
    return unused


def apply_freezing(model, parts: tuple[str, ...]) -> list[str]:
    """Set requires_grad per part; return the names of the trainable parameters."""
    unused = unused_vision_parameters(model)
    trainable = []
    for name, param in model.named_parameters():
        train = part_of(name) in parts and name not in unused
        param.requires_grad_(train)
        if train:
            trainable.append(name)
    if not trainable:
        raise EdgeVLMError(f"no parameter is trainable with parts {parts}")
    return trainable


def count_trainable(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def pick_mixed_precision(requested: str) -> str:
    """'auto' -> bf16 where the GPU supports it, else full fp32 (CPU bf16 autocast is slow on most CPUs)."""
    if requested != "auto":
        if requested == "fp16" and not torch.cuda.is_available():
            raise EdgeVLMError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"
