"""The backends compute the real model: the PyTorch stages give the tokens transformers' own `generate` gives, and
a preset built in memory is labelled random weights. The onnxruntime backend runs on an exported bundle (slow:
the export takes a minute or more on this machine)."""

from __future__ import annotations

import pytest

from edge_vlm.bench.settings import BenchSettings, parse_backend
from edge_vlm.bench.worker import measure, run_query
from edge_vlm.bench.workload import prompt_ids, synthetic_image


def test_torch_stages_match_generate(tiny_checkpoint):
    import torch

    from edge_vlm.bench.backends.torch_backend import TorchBackend
    from edge_vlm.imaging import preprocess

    settings = BenchSettings(model=str(tiny_checkpoint), threads=2)
    backend = TorchBackend(parse_backend("torch-fp32"), settings)
    backend.load()
    image = synthetic_image()
    ids, _ = prompt_ids(backend.tokenizer, backend.num_image_tokens, 70)
    new_tokens = 7
    ours = run_query(backend, image, ids, new_tokens)["tokens"]
    assert len(ours) == new_tokens + 1  # the prefill's token, then one per decode step

    pixels = torch.from_numpy(preprocess(image, backend.image_config))[None]
    with torch.no_grad():
        reference = backend.model.generate(
            input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            pixel_values=pixels, max_new_tokens=new_tokens + 1, do_sample=False, eos_token_id=None,
            pad_token_id=backend.tokenizer.eos_token_id,
        )[0, len(ids):].tolist()
    assert ours == reference


def test_preset_in_memory_is_labelled_random_weights():
    settings = BenchSettings(preset="tiny", random_weights=True, prompt_tokens=70, new_tokens=3, runs=1, warmup=0,
                             threads=2)
    result = measure({"settings": settings.to_dict(), "backend": "torch-fp32"}, progress=False)
    assert result["status"] == "ok" and result["random_weights"] is True
    assert result["info"]["artifacts"]["kind"] == "in-memory"
    assert "built in memory" in result["info"]["source"]


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory):
    """A tiny checkpoint whose decoder the ONNX builder accepts (head size 80), exported at fp32."""
    from edge_vlm.model.checkpoint import CheckpointMeta, save_checkpoint
    from edge_vlm.model.factory import random_model, small_tokenizer
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("ortbench")
    tokenizer = small_tokenizer()
    model = random_model("tiny", tokenizer, seed=1, weight_std=0.05, num_attention_heads=2, num_key_value_heads=2)
    checkpoint = save_checkpoint(model, tokenizer, root / "ckpt", CheckpointMeta(random_weights=True))
    proc = run_cli("export", "--model", str(checkpoint), "--out", str(root / "bundle"), "--precision", "fp32",
                   "--val-samples", "1", "--val-max-new-tokens", "2", "--allow-degraded", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return checkpoint, root / "bundle"


@pytest.mark.slow
def test_onnxruntime_backend_matches_torch_and_counts_the_graph(fp32_bundle):
    from edge_vlm.bench.roofline import analytic_decode_bytes

    checkpoint, bundle = fp32_bundle
    settings = BenchSettings(model=str(checkpoint), bundles=[str(bundle)], backends=["torch-fp32", "ort-fp32"],
                             prompt_tokens=70, new_tokens=6, runs=1, warmup=0, threads=2)
    torch_result = measure({"settings": settings.to_dict(), "backend": "torch-fp32"}, progress=False)
    ort_result = measure({"settings": settings.to_dict(), "backend": "ort-fp32", "bundle": str(bundle)},
                         progress=False)
    assert ort_result["status"] == "ok" and ort_result["random_weights"] is True
    assert ort_result["tokens"] == torch_result["tokens"]
    for stage in ("preprocess_ms", "vision_ms", "prefill_ms", "decode_ms", "e2e_ms"):
        assert ort_result["stages"][stage]["median"] > 0
    # the graph's real initializers (qkv fused, lm_head with its bias) hold exactly the fp32 decoder's bytes
    import json

    config = json.loads((checkpoint / "config.json").read_text())["text_config"]
    analytic = analytic_decode_bytes(config, "fp32", ort_result["decode_bytes"]["context"])
    counted = ort_result["decode_bytes"]
    assert counted["matmul_weights"] == analytic.matmul_weights
    assert counted["lm_head"] == analytic.lm_head
    assert counted["vectors"] == analytic.vectors
    assert counted["kv_cache"] == analytic.kv_cache
    assert ort_result["info"]["artifacts"]["roles"]["decoder"] > analytic.matmul_weights


def test_bitsandbytes_nf4_counts_packed_weights(tiny_checkpoint):
    """torch-nf4 runs every stage and its decode bytes are the packed 4-bit weights (+ a few % of block scales), and
    the full fp32 bytes of the layers kept in float where bitsandbytes' CPU kernel cannot pack them."""
    pytest.importorskip("bitsandbytes")
    from edge_vlm.export.bnb import cpu_4bit_packing
    from edge_vlm.model.presets import TINY

    settings = BenchSettings(model=str(tiny_checkpoint), backends=["torch-nf4"], prompt_tokens=70, new_tokens=3,
                             runs=1, warmup=0, threads=2)
    result = measure({"settings": settings.to_dict(), "backend": "torch-nf4"}, progress=False)
    assert result["status"] == "ok" and len(result["tokens"]) == 4
    t = TINY["text"]
    h, inter, layers = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    assert (h, inter) == (160, 320)  # the packable set below is worked out for these widths
    # per layer (in -> out): q k v dense h -> h, fc1 h -> inter, fc2 inter -> h (kv heads = heads). A CPU that packs
    # 4-bit weights takes in % 64 == 0 and out % 32 == 0 only: fc2 (320 -> 160); q k v dense fc1 (in 160) stay fp32.
    if cpu_4bit_packing():
        packed, floats, float_layers = layers * inter * h, layers * (4 * h * h + h * inter), 5 * layers
    else:
        packed, floats, float_layers = layers * (4 * h * h + 2 * h * inter), 0, 0
    assert result["info"]["bitsandbytes_float_layers"] == float_layers
    base = 4 * floats + packed // 2
    assert base < result["decode_bytes"]["matmul_weights"] < base + packed // 2 * 0.1
