"""BundleEngine against PyTorch (TorchEngine on the same checkpoint): greedy tokens, prefix reuse, history,
text-only prompts, streaming, EOS, seeded sampling; and the decoder step against plain session.run."""

from __future__ import annotations

import numpy as np
import pytest

from edge_vlm.engine import GenerationConfig, answer
from edge_vlm.runtime import BundleEngine

QUESTIONS = ["What is in the image?", "How many circles are there?\nAnswer the question using a single word or phrase."]


@pytest.fixture(scope="module")
def engines(fp32_bundle, exportable_tiny):
    from edge_vlm.model.engine import TorchEngine

    return BundleEngine.from_bundle(fp32_bundle), TorchEngine.from_checkpoint(exportable_tiny)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    return (rng.random((40, 70, 3)) * 255).astype(np.uint8)  # not square: exercises the padding too


def _greedy(max_new_tokens=12):
    return GenerationConfig(max_new_tokens=max_new_tokens)


def test_fp32_bundle_greedy_answers_equal_pytorch(engines, image):
    bundle, torch_engine = engines
    prepared_b, prepared_t = bundle.prepare_image(image), torch_engine.prepare_image(image)
    for question in QUESTIONS:  # two questions on one prepared image: the cached prefix is reused
        expected = answer(torch_engine, prepared_t, question, config=_greedy())
        assert answer(bundle, prepared_b, question, config=_greedy()) == expected
        assert expected  # random weights still produce text; an empty answer would make this test vacuous


def test_greedy_token_ids_equal_pytorch_generate(engines, image):
    """Token level, not text level: the bundle's ids equal transformers' generate on the same prompt."""
    import torch

    from edge_vlm.engine import IMAGE_PREFIX
    from edge_vlm.imaging import preprocess
    from edge_vlm.prompting import inference_prompt

    bundle, torch_engine = engines
    model, tokenizer = torch_engine.model, torch_engine.tokenizer
    ids = tokenizer.encode_prompt(inference_prompt(QUESTIONS[0]), bundle.num_image_tokens)
    with torch.no_grad():
        pixels = torch.from_numpy(preprocess(image, torch_engine.image_config))[None]
        expected = model.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, max_new_tokens=10,
                                  do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    prepared = bundle.prepare_image(image)
    assert prepared.prefix_ids == tokenizer.encode_prompt(IMAGE_PREFIX, bundle.num_image_tokens)
    got = list(bundle.generate_ids(ids[len(prepared.prefix_ids):], prepared.prefix_cache, 10,
                                   GenerationConfig(max_new_tokens=10, stop_at_eos=False)))
    assert got == [t for t in expected if t != tokenizer.eos_token_id]


def test_history_and_text_only_match_pytorch(engines, image):
    bundle, torch_engine = engines
    history = [("What colour is it?", "red")]
    prepared_b, prepared_t = bundle.prepare_image(image), torch_engine.prepare_image(image)
    assert answer(bundle, prepared_b, QUESTIONS[1], history, _greedy()) == answer(
        torch_engine, prepared_t, QUESTIONS[1], history, _greedy())
    assert answer(bundle, None, "Say something.", config=_greedy()) == answer(
        torch_engine, None, "Say something.", config=_greedy())


def test_prefill_logits_equal_pytorch(engines, image):
    import torch

    bundle, torch_engine = engines
    prepared = bundle.prepare_image(image)
    ids = bundle.tokenizer.encode_prompt("USER: <image>\nWhat? ASSISTANT:", bundle.num_image_tokens)
    logits, _ = bundle.prefill(ids, prepared.features)
    with torch.no_grad():
        embeds = torch_engine.model.get_input_embeddings()(torch.tensor([ids]))
        embeds[0, torch.tensor(ids) == bundle.tokenizer.image_token_id] = torch.from_numpy(prepared.features)
        expected = torch_engine.model(inputs_embeds=embeds).logits[0, -1].numpy()
    np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=0)


def test_a_generated_image_token_keeps_its_own_embedding_row(engines):
    """A random-weight model can generate <image>; decoding then embeds it as transformers does (its own row),
    while an <image> in a prompt without image features is still refused."""
    from edge_vlm.errors import EdgeVLMError

    bundle, torch_engine = engines
    image_id = bundle.tokenizer.image_token_id
    with pytest.raises(EdgeVLMError, match="image positions"):
        bundle.embed([image_id])
    expected = torch_engine.model.get_input_embeddings().weight[image_id].detach().numpy()
    np.testing.assert_allclose(bundle.embed([image_id], generated=True)[0, 0], expected, rtol=1e-3, atol=1e-4)


def test_prefix_cache_is_not_modified_by_answers(engines, image):
    bundle, _ = engines
    prepared = bundle.prepare_image(image)
    cache = prepared.prefix_cache
    before = [cache.numpy(index).copy() for index in range(len(cache.values))]
    first = answer(bundle, prepared, QUESTIONS[0], config=_greedy())
    answer(bundle, prepared, QUESTIONS[1], config=_greedy())
    assert answer(bundle, prepared, QUESTIONS[0], config=_greedy()) == first
    for index, old in enumerate(before):  # the valid positions; answers write after them, or into a copy
        np.testing.assert_array_equal(old, cache.numpy(index))


def test_streamed_pieces_join_to_the_answer(engines, image):
    bundle, _ = engines
    prepared = bundle.prepare_image(image)
    pieces = list(bundle.stream(prepared, QUESTIONS[0], config=_greedy()))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == answer(bundle, prepared, QUESTIONS[0], config=_greedy())


def test_stops_at_eos(engines, image, monkeypatch):
    """Force EOS as the 3rd token: the answer ends there (and the EOS itself is not emitted)."""
    bundle, _ = engines
    prepared = bundle.prepare_image(image)
    original = bundle.decoder.forward
    calls = {"n": 0}

    def forward(embeds, cache, **options):
        logits, cache = original(embeds, cache, **options)
        calls["n"] += 1
        if calls["n"] == 3:  # prefill + 2 steps: the 3rd logits pick the 3rd token
            logits = np.full_like(logits, -1e9)
            logits[bundle.eos_token_id] = 0
        return logits, cache

    monkeypatch.setattr(bundle.decoder, "forward", forward)
    ids = list(bundle.generate_ids(bundle.tokenizer.encode(" hello"), prepared.prefix_cache, 20, _greedy(20)))
    assert len(ids) == 2 and bundle.eos_token_id not in ids


def test_sampling_is_seeded(engines, image):
    bundle, _ = engines
    prepared = bundle.prepare_image(image)

    def sample(seed):
        config = GenerationConfig(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=seed)
        return answer(bundle, prepared, QUESTIONS[0], config=config)

    assert sample(1) == sample(1)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_io_binding_step_equals_plain_run(engines):
    """The decoder's IO-bound step against a plain session.run with numpy inputs on the same graph."""
    bundle, _ = engines
    decoder = bundle.decoder
    rng = np.random.default_rng(0)
    embeds = rng.normal(size=(1, 5, decoder.hidden_size)).astype(np.float32) * 0.1
    logits, cache = decoder.forward(embeds, decoder.empty_cache())
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, 5), np.int64)}
    feeds.update({name: np.zeros((1, decoder.kv_heads, 0, decoder.head_size), np.float32)
                  for name in decoder.past_names})
    outputs = dict(zip([o.name for o in decoder.session.get_outputs()], decoder.session.run(None, feeds)))
    np.testing.assert_array_equal(logits, outputs["logits"].reshape(-1))
    for index, name in enumerate(decoder.present_names):
        np.testing.assert_array_equal(cache.numpy(index), outputs[name])
    assert cache.length == 5


def test_threads_and_explicit_cpu_provider(fp32_bundle):
    engine = BundleEngine.from_bundle(fp32_bundle, providers=["cpu"], threads=1, verify="size")
    assert engine.providers == {"vision": ["CPUExecutionProvider"], "decoder": ["CPUExecutionProvider"]}
    assert engine.random_weights
