"""CUDA checks (skipped without a GPU): the model on the GPU matches the CPU, half precision and bitsandbytes track
fp32, and a training step runs in bf16. Run on a GPU machine with `python -m pytest tests/gpu -m gpu`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_vlm.model.checkpoint import load_checkpoint
from edge_vlm.prompting import inference_prompt

pytestmark = pytest.mark.gpu


def _inputs(model, tokenizer, device):
    ids = tokenizer.encode_prompt(inference_prompt("What is in the image?"), model.num_image_tokens)
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 56, 56)).astype(np.float32))
    return torch.tensor([ids], device=device), pixels.to(device)


def _last_logits(model, ids, pixels):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels.to(model.dtype)).logits[0, -1].float().cpu()


def _cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.fixture(autouse=True)
def no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def test_cuda_fp32_matches_cpu(tiny_checkpoint):
    cpu, tokenizer, _ = load_checkpoint(tiny_checkpoint)
    gpu, _, _ = load_checkpoint(tiny_checkpoint, device="cuda")
    ids, pixels = _inputs(cpu, tokenizer, "cpu")
    expected = _last_logits(cpu, ids, pixels)
    got = _last_logits(gpu, ids.cuda(), pixels.cuda())
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tracks_fp32(tiny_checkpoint, dtype):
    reference, tokenizer, _ = load_checkpoint(tiny_checkpoint, device="cuda")
    half, _, _ = load_checkpoint(tiny_checkpoint, dtype=dtype, device="cuda")
    ids, pixels = _inputs(reference, tokenizer, "cuda")
    assert _cosine(_last_logits(half, ids, pixels), _last_logits(reference, ids, pixels)) > 0.99


@pytest.mark.parametrize("bits,floor", [(8, 0.98), (4, 0.9)])
def test_bitsandbytes_on_cuda(tiny_checkpoint, bits, floor):
    pytest.importorskip("bitsandbytes")
    from edge_vlm.export.bnb import load_quantized

    reference, tokenizer, _ = load_checkpoint(tiny_checkpoint, device="cuda")
    quantized = load_quantized(tiny_checkpoint, bits=bits)
    ids, pixels = _inputs(reference, tokenizer, "cuda")
    assert _cosine(_last_logits(quantized, ids, pixels), _last_logits(reference, ids, pixels)) > floor


def test_training_step_in_bf16_on_cuda(tiny_checkpoint, tmp_path):
    from edge_vlm.data.synth import write_world
    from edge_vlm.train.config import TrainConfig
    from edge_vlm.train.loop import train

    world = tmp_path / "world"
    write_world(world, seed=0, train=16, eval_size=7, image_size=56)
    config = TrainConfig(stage="finetune", init_from=str(tiny_checkpoint), data_path=str(world / "finetune.json"),
                         global_batch_size=8, per_device_batch_size=4, lr=1e-4, max_steps=2,
                         output_dir=str(tmp_path / "run"), progress=False, plot=False, mixed_precision="auto")
    result = train(config)
    assert result.steps == 2 and len(result.losses) >= 1 and all(np.isfinite(result.losses))
    assert result.final_dir is not None and (result.final_dir / "config.json").is_file()
