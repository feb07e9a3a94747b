"""Named model shapes. Torch-free (plain dicts), so `edge-vlm info --preset` and the benchmarks can read them cheaply."""

from __future__ import annotations

from edge_vlm.errors import EdgeVLMError

# Reference §1. `<image>` is an added special token after Phi-2's 50295 tokenizer entries -> id 50295.
LLAVA_PHI_2 = {
    "vision": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 336,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
    },
    "text": {
        "vocab_size": 51200,
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "hidden_act": "gelu_new",
        "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-5,
        "partial_rotary_factor": 0.4,
        "rope_theta": 10000.0,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    },
    "image_token_id": 50295,
}

# Test-sized. Phi-2's head_dim 80 x partial_rotary 0.4 = rotary dim 32: ONNX Runtime's GroupQueryAttention needs the
# head size and rotary dim to be multiples of 16 (rotary_dim/2 a multiple of 8). Most Linear widths (160) are not multiples
# of 64, so on AVX-512 CPUs bitsandbytes' 4-bit path keeps them in float (edge_vlm/export/bnb.py). 56 px / 14 = 4x4 = 16 image tokens.
TINY = {
    "vision": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "patch_size": 14,
        "image_size": 56,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 64,
    },
    "text": {
        "vocab_size": 4096,
        "hidden_size": 160,
        "intermediate_size": 320,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "hidden_act": "gelu_new",
        "max_position_embeddings": 512,
        "layer_norm_eps": 1e-5,
        "partial_rotary_factor": 0.4,
        "rope_theta": 10000.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    # The tiny tokenizer (edge_vlm.tokenizer.train_bpe_tokenizer) puts <|endoftext|> at 0; <image> is the last id.
    "image_token_id": None,
}

# The built-in model (edge_vlm/assets/builtin, trained by train/configs/builtin.yaml). Shapes: head_dim 80 (160 / 2 heads) x partial_rotary_factor 0.4 = rotary dim 32, exactly Phi-2's attention geometry,
# so the decoder goes through onnxruntime-genai's builder (GroupQueryAttention needs a head size that is a multiple of
# 16 and rotary_dim / 2 a multiple of 8); widths of 160 are not multiples of 64, so
# on AVX-512 CPUs bitsandbytes' 4-bit path keeps those layers in float (edge_vlm/export/bnb.py).
# 84 px / 14 = 6 x 6 = 36 image tokens. The vocabulary is fitted to the tokenizer at build time (a byte-level BPE
# trained on the world's text: ~650 entries -> 704 rows). ~2.0M parameters, ~8 MB fp32.
BUILTIN_PRESET = {
    "vision": {
        "hidden_size": 96,
        "intermediate_size": 384,
        "num_hidden_layers": 4,  # LLaVA reads hidden_states[-2]: 3 layers feed the projector
        "num_attention_heads": 3,
        "patch_size": 14,
        "image_size": 84,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 96,
    },
    "text": {
        "vocab_size": 704,
        "hidden_size": 160,
        "intermediate_size": 640,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "hidden_act": "gelu_new",
        "max_position_embeddings": 512,
        "layer_norm_eps": 1e-5,
        "partial_rotary_factor": 0.4,
        "rope_theta": 10000.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    # train_bpe_tokenizer puts <|endoftext|> at 0 and <image> after the learned entries: taken from the tokenizer.
    "image_token_id": None,
}

PRESETS = {"llava-phi-2": LLAVA_PHI_2, "tiny": TINY, "builtin": BUILTIN_PRESET}


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise EdgeVLMError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def num_image_tokens(vision: dict) -> int:
    return (vision["image_size"] // vision["patch_size"]) ** 2


def count_parameters(preset: dict) -> dict[str, int]:
    """Exact parameter counts per part, from the shapes alone (no weights are built).
    Checked against the built model's numel() in the tests."""
    v, t = preset["vision"], preset["text"]
    d, n_layers, inter = v["hidden_size"], v["num_hidden_layers"], v["intermediate_size"]
    patches = num_image_tokens(v)
    vision = 3 * d * v["patch_size"] ** 2  # patch embedding (no bias)
    vision += d + (patches + 1) * d  # class embedding + position embeddings
    vision += 2 * 2 * d  # pre_layrnorm and post_layernorm
    vision += n_layers * (4 * (d * d + d) + (d * inter + inter) + (inter * d + d) + 2 * 2 * d)
    h, ti, tl, vocab = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], t["vocab_size"]
    kv = h // t["num_attention_heads"] * t["num_key_value_heads"]
    projector = (d * h + h) + (h * h + h)
    llm = vocab * h  # embed_tokens
    llm += tl * ((h * h + h) + 2 * (h * kv + kv) + (h * h + h) + (h * ti + ti) + (ti * h + h) + 2 * h)
    llm += 2 * h  # final_layernorm
    llm += vocab * h + vocab  # lm_head with bias
    return {"vision": vision, "projector": projector, "llm": llm, "total": vision + projector + llm}
