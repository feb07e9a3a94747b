"""The PyTorch engine: cached image prefix + streaming give exactly what plain `generate` gives."""

from __future__ import annotations

import time

import numpy as np
import torch

from edge_vlm.engine import Chat, GenerationConfig, answer
from edge_vlm.model.engine import TorchEngine
from edge_vlm.prompting import inference_prompt


def _plain_generate(engine: TorchEngine, image, question, history=None, max_new_tokens=8):
    ids = engine.tokenizer.encode_prompt(inference_prompt(question, history), engine.num_image_tokens)
    with torch.no_grad():
        out = engine.model.generate(input_ids=torch.tensor([ids]), pixel_values=engine.pixel_values(image),
                                    max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=engine.tokenizer.eos_token_id,
                                    pad_token_id=engine.tokenizer.eos_token_id)
    return engine.tokenizer.decode(out[0, len(ids):].tolist()).strip()


def test_prefix_cache_reuse_equals_plain_generate(tiny_checkpoint):
    engine = TorchEngine.from_checkpoint(tiny_checkpoint)
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    prepared = engine.prepare_image(image)
    config = GenerationConfig(max_new_tokens=8)
    for question in ("What is it?", "How many circles are there?"):  # the second reuses the same cache
        assert answer(engine, prepared, question, config=config) == _plain_generate(engine, image, question)


def test_chat_keeps_history(tiny_checkpoint):
    engine = TorchEngine.from_checkpoint(tiny_checkpoint)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    chat = Chat(engine, image, GenerationConfig(max_new_tokens=6))
    first = chat.ask("What is it?")
    second = chat.ask("Are you sure?")
    assert chat.history == [("What is it?", first), ("Are you sure?", second)]
    assert second == _plain_generate(engine, image, "Are you sure?", history=[("What is it?", first)], max_new_tokens=6)


def test_sampling_is_seeded(tiny_checkpoint):
    engine = TorchEngine.from_checkpoint(tiny_checkpoint)
    prepared = engine.prepare_image(np.zeros((32, 32, 3), dtype=np.uint8))
    config = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    assert answer(engine, prepared, "Describe it.", config=config) == answer(engine, prepared, "Describe it.",
                                                                               config=config)


def test_processor_batch_generates_what_single_prompts_generate(tiny_checkpoint):
    from edge_vlm.model.processing import LlavaPhiProcessor

    engine = TorchEngine.from_checkpoint(tiny_checkpoint)
    processor = LlavaPhiProcessor.from_dir(tiny_checkpoint)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.integers(0, 256, (70, 30, 3), dtype=np.uint8)]
    questions = ["What is it?", "Is there a big red circle on the left side?"]
    batch = processor.questions(questions, images)
    with torch.no_grad():
        out = engine.model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=engine.tokenizer.eos_token_id,
                                    pad_token_id=engine.tokenizer.eos_token_id)
    width = batch["input_ids"].shape[1]
    for row, (question, image) in enumerate(zip(questions, images)):
        single = _plain_generate(engine, image, question, max_new_tokens=6)
        assert engine.tokenizer.decode(out[row, width:].tolist()).strip() == single


def test_closing_a_stream_stops_generation(tiny_checkpoint):
    engine = TorchEngine.from_checkpoint(tiny_checkpoint)
    prepared = engine.prepare_image(np.zeros((32, 32, 3), dtype=np.uint8))
    calls = []
    forward = engine.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    engine.model.forward = counting_forward
    stream = engine.stream(prepared, "Describe it.", config=GenerationConfig(max_new_tokens=400, stop_at_eos=False))
    next(stream)
    stream.close()
    seen = len(calls)
    time.sleep(3)  # without the stop, generate would keep running in its thread (~100 steps/s for this model)
    assert len(calls) == seen
    assert seen < 50, f"generate ran {len(calls)} steps after the stream was closed"
