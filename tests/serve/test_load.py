"""20 concurrent clients for 60 s against the built-in model's INT4 bundle (slow: not in CI's run).

Each client asks, through the official openai client, about one of a few pictures (so the prefix cache is hit) or a
new one (so it is filled and evicted), streamed or not, and now and then hangs up after the first chunk. Passing
means: no request failed except the documented 429s (queue full), every answer equals the answer the same request
got alone before the load, and the server's RSS is flat once warm (the prefix cache is bounded)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import numpy as np
import pytest

from tests.serve.helpers import Server, openai_client, user

pytestmark = pytest.mark.slow

CLIENTS = 20
DURATION_S = 60.0
QUESTIONS = ("What color is the square?", "Where is the red object?", "What is in the picture?")


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def test_twenty_clients_for_a_minute(int4_bundle, pictures, tmp_path):
    import openai
    from PIL import Image

    server = Server("--bundle", int4_bundle, "--model-name", "builtin-int4", "--image-cache-mb", "16",
                    log=tmp_path / "stderr.txt")
    fixed = [pictures[name] for name in ("scene0.png", "scene1.png", "scene2.png", "scene0.jpg")]
    try:
        probe = openai_client(server.url)
        expected = {(p, q): probe.chat.completions.create(model="builtin-int4", messages=[user(q, p)])
                    .choices[0].message.content for p in fixed for q in QUESTIONS}
        outcomes: Counter = Counter()
        failures: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + DURATION_S
        rss: list[tuple[float, float]] = []

        def client(index: int) -> None:
            rng = random.Random(index)
            api = openai_client(server.url)
            count = 0
            while time.monotonic() < stop_at:
                count += 1
                if rng.random() < 0.2:  # a picture nobody sent before: fills the cache, which must evict
                    picture = tmp_path / f"new-{index}-{count}.png"
                    Image.fromarray(np.random.default_rng(index * 100000 + count).integers(
                        0, 256, (84, 84, 3), np.uint8)).save(picture)
                else:
                    picture = rng.choice(fixed)
                question = rng.choice(QUESTIONS)
                request = dict(model="builtin-int4", messages=[user(question, picture)])
                try:
                    if rng.random() < 0.5:
                        text, kind = api.chat.completions.create(**request).choices[0].message.content, "plain"
                    else:
                        stream = api.chat.completions.create(stream=True, **request)
                        if rng.random() < 0.1:  # a robot that gave up: hang up after the first chunk
                            next(iter(stream))
                            stream.close()
                            with lock:
                                outcomes["hung up"] += 1
                            continue
                        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                        kind = "streamed"
                except openai.RateLimitError:
                    with lock:
                        outcomes["429"] += 1
                    time.sleep(rng.uniform(0.05, 0.3))
                    continue
                except Exception as exc:  # any other failure fails the test
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                want = expected.get((picture, question))
                with lock:
                    outcomes[kind] += 1
                    if want is not None and text != want:
                        failures.append(f"{picture.name} / {question}: {text!r} != {want!r}")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            rss.append((time.monotonic() - started, _rss_mb(server.pid)))
            time.sleep(1.0)
        for thread in threads:
            thread.join()
    finally:
        assert server.stop() == 0, server.stderr()
    answered = outcomes["plain"] + outcomes["streamed"]
    print(f"\n{dict(outcomes)}, {answered / DURATION_S:.1f} answers/s, RSS {rss[0][1]:.0f} -> {rss[-1][1]:.0f} MB")
    assert not failures, failures[:10]
    assert answered > 100 and outcomes["hung up"] > 0
    warm = [mb for t, mb in rss if t >= 15]  # after the cache has filled
    assert max(warm) - warm[0] < 30, rss
    assert "Traceback" not in server.stderr(), server.stderr()
