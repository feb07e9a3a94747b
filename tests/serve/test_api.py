"""`edge-vlm serve` through the official `openai` client, against a real server process: its answers equal
`edge-vlm ask`'s on the same picture and question (greedy, and sampled with a seed), streamed or not, over several
turns; usage, timings, prefix reuse across requests, /v1/models, /health and /metrics."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.serve.helpers import Server, openai_client, run_ask, user

QUESTIONS = [("scene0.png", "What color is the square?"), ("scene1.png", "Where is the red object?"),
             ("scene0.jpg", "What is in the picture?"), ("scene-rgba.png", "What color is the circle?")]


def _ask(bundle, picture, question, *extra) -> str:
    return run_ask("--bundle", bundle, "--image", picture, question, *extra).strip()


def _streamed(client, **request) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, **request))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("name, question", QUESTIONS)
def test_answers_equal_ask_streamed_or_not(bundle_server, int4_bundle, pictures, name, question):
    expected = _ask(int4_bundle, pictures[name], question)
    assert expected  # ask printed an answer
    client = openai_client(bundle_server.url)
    messages = [user(question, pictures[name])]
    reply = client.chat.completions.create(model="builtin-int4", messages=messages)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    streamed, chunks = _streamed(client, model="builtin-int4", messages=messages)
    assert streamed == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


def test_sampled_answers_equal_ask_with_the_same_seed(bundle_server, int4_bundle, pictures):
    expected = _ask(int4_bundle, pictures["scene1.png"], "Describe the picture.", "--temperature", "1.3", "--top-p",
                    "0.9", "--seed", "18")
    client = openai_client(bundle_server.url)
    request = dict(model="builtin-int4", messages=[user("Describe the picture.", pictures["scene1.png"])],
                   temperature=1.3, top_p=0.9, seed=18)
    assert client.chat.completions.create(**request).choices[0].message.content == expected
    assert _streamed(client, **request)[0] == expected


def test_multi_turn_equals_ask_interactive(bundle_server, int4_bundle, pictures):
    first, follow_up = "What color is the square?", "Where is the red object?"
    lines = run_ask("--bundle", int4_bundle, "--image", pictures["scene2.png"], "-i", stdin=f"{first}\n{follow_up}\n")
    answers = [line.strip() for line in lines.splitlines()]
    assert len(answers) == 2, lines
    client = openai_client(bundle_server.url)
    messages = [user(first, pictures["scene2.png"]), {"role": "assistant", "content": answers[0]},
                {"role": "user", "content": follow_up}]
    assert client.chat.completions.create(model="builtin-int4", messages=messages).choices[0].message.content \
        == answers[1]


def test_text_only_question_equals_ask(bundle_server, int4_bundle):
    expected = run_ask("--bundle", int4_bundle, "How many sides does a square have?").strip()
    client = openai_client(bundle_server.url)
    reply = client.chat.completions.create(model="builtin-int4", messages=[
        {"role": "user", "content": "How many sides does a square have?"}])
    assert reply.choices[0].message.content == expected


def test_usage_counts_the_template_and_the_answer(bundle_server, int4_bundle, pictures):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(int4_bundle / "tokenizer.json"))
    question = "What color is the square?"
    # LLaVA-Phi's phi-2_v0 prompt, written out; <image> stands for the model's 36 image tokens (84 px / 14 px = 6x6)
    prompt = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              f"detailed, and polite answers to the user's questions. USER: <image>\n{question} ASSISTANT:")
    prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False).ids) - 1 + 36
    client = openai_client(bundle_server.url)
    reply = client.chat.completions.create(model="builtin-int4", messages=[user(question, pictures["scene0.png"])])
    answer_tokens = len(tokenizer.encode(" " + reply.choices[0].message.content, add_special_tokens=False).ids)
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.completion_tokens == answer_tokens
    assert reply.usage.total_tokens == prompt_tokens + answer_tokens
    timings = reply.model_extra["edge_vlm"]["timings_ms"]
    assert {"queue_ms", "vision_ms", "prefill_ms", "decode_ms", "total_ms"} <= set(timings)
    assert timings["total_ms"] >= timings["prefill_ms"] + timings["decode_ms"]
    # the streamed form reports usage in its last chunk when asked to, as OpenAI does
    _, chunks = _streamed(client, model="builtin-int4", messages=[user(question, pictures["scene0.png"])],
                          stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == prompt_tokens


def test_max_tokens_and_stop(bundle_server, pictures):
    client = openai_client(bundle_server.url)
    messages = [user("What color is the square?", pictures["scene0.png"])]
    full = client.chat.completions.create(model="builtin-int4", messages=messages)
    word = full.choices[0].message.content
    assert len(word) >= 3 and full.choices[0].finish_reason == "stop"
    # the built-in model answers this in one token and then EOS: with room for one token it stops for length
    cut = client.chat.completions.create(model="builtin-int4", messages=messages, max_tokens=1)
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (word, "length")
    assert cut.usage.completion_tokens == 1
    stopped = client.chat.completions.create(model="builtin-int4", messages=messages, stop=[word[1:3], "zzz"])
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == (word[:1], "stop")
    assert _streamed(client, model="builtin-int4", messages=messages, stop=word[1:3])[0] == word[:1]


def test_two_questions_about_one_picture_reuse_its_prefix(bundle_server, pictures):
    client = openai_client(bundle_server.url)
    before = _metric(bundle_server.url, "edge_vlm_image_prefix_cache_total", result="hit")
    first = client.chat.completions.create(model="builtin-int4", messages=[user("What color is the square?",
                                                                                 pictures["scene2.png"])])
    second = client.chat.completions.create(model="builtin-int4", messages=[user("Where is the red object?",
                                                                                  pictures["scene2.png"])])
    assert second.model_extra["edge_vlm"]["image_cached"] is True
    assert second.model_extra["edge_vlm"]["timings_ms"]["vision_ms"] == 0
    assert first.model_extra["edge_vlm"]["timings_ms"]["vision_ms"] >= 0
    assert _metric(bundle_server.url, "edge_vlm_image_prefix_cache_total", result="hit") >= before + 1


def test_models_health_and_metrics(bundle_server, pictures):
    client = openai_client(bundle_server.url)
    client.chat.completions.create(model="builtin-int4", messages=[user("Where is the red object?",
                                                                        pictures["scene1.png"])])
    assert [m.id for m in client.models.list()] == ["builtin-int4"]
    assert client.models.retrieve("builtin-int4").id == "builtin-int4"
    with urllib.request.urlopen(bundle_server.url + "/health") as response:
        health = json.load(response)
    assert health["loaded"] is True and health["status"] == "ok"
    assert health["precision"] == "int4" and health["provider"] == "CPUExecutionProvider"
    assert health["backend"] == "bundle" and health["random_weights"] is False
    families = _metrics(bundle_server.url)
    assert {"edge_vlm_http_requests", "edge_vlm_queue_depth", "edge_vlm_stage_seconds",
            "edge_vlm_decode_tokens_per_second", "edge_vlm_completion_tokens"} <= set(families)
    assert families["edge_vlm_stage_seconds"].type == "histogram"
    stages = {s.labels["stage"] for s in families["edge_vlm_stage_seconds"].samples}
    assert {"queue", "vision", "prefill", "decode", "total"} <= stages
    served = [s for s in families["edge_vlm_http_requests"].samples
              if s.labels == {"route": "/v1/chat/completions", "status": "200"}]
    assert served and served[0].value >= 1


def test_the_default_model_is_the_builtin_checkpoint_as_ask_answers_it(tmp_path, pictures):
    """`serve` without --bundle runs the built-in PyTorch checkpoint, as `ask` does, with the same answers."""
    question = "What color is the square?"
    expected = run_ask("--image", pictures["scene1.png"], question).strip()
    server = Server(log=tmp_path / "stderr.txt")
    try:
        client = openai_client(server.url)
        assert [m.id for m in client.models.list()] == ["edge-vlm-builtin"]
        messages = [user(question, pictures["scene1.png"])]
        assert client.chat.completions.create(model="edge-vlm-builtin", messages=messages).choices[0].message \
            .content == expected
        assert _streamed(client, model="edge-vlm-builtin", messages=messages)[0] == expected
        again = client.chat.completions.create(model="edge-vlm-builtin", messages=messages)
        assert again.model_extra["edge_vlm"]["image_cached"] is True
        assert again.choices[0].message.content == expected
    finally:
        assert server.stop() == 0, server.stderr()


def _metrics(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics") as response:
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


def _metric(url: str, name: str, **labels) -> float:
    family = name.removesuffix("_total")
    for sample in _metrics(url).get(family, type("", (), {"samples": []})).samples:
        if sample.name == name and sample.labels == labels:
            return sample.value
    return 0.0
