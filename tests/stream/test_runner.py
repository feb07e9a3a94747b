"""The latest-frame loop's policy, with a slow stand-in engine (this tests the runner, not a model), and once with
the real TorchEngine on the tiny checkpoint."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image
from stream_helpers import SlowEngine, coloured_frames

from edge_vlm.errors import EdgeVLMError
from edge_vlm.stream import (
    FrameSource,
    Grabbed,
    PartialText,
    ReconnectPolicy,
    SourceError,
    StreamResult,
    StreamRunner,
    open_source,
)
from edge_vlm.stream.file_sources import SyntheticSource
from edge_vlm.stream.stats import percentile


def test_a_slow_model_sees_recent_frames_and_the_drop_counts_add_up():
    """A model 10x slower than the camera must answer about the newest frame each time, not work through a
    backlog: with a queue, the 8th answer would be about a frame ~1 s old."""
    engine = SlowEngine(prepare_s=0.15)
    with SyntheticSource(fps=60, size=(32, 32), max_frames=90) as source:  # 1.5 s of camera, then end of stream
        results = list(StreamRunner(engine, source, ["q"]).results())
        stats = source.stats
    assert 5 <= len(results) <= 12
    start_ages = [r.start_age_ms for r in results]
    assert max(start_ages) < 200, start_ages  # one frame period is 17 ms; generous for a loaded 2-core machine
    assert all(r.frame_age_ms >= 150 for r in results)  # age at answer includes the model's time
    assert results[-1].frame_seq == 89  # the last frame is answered, the ones before it mostly skipped
    assert [r.frames_dropped for r in results[1:]] == [b.frame_seq - a.frame_seq - 1
                                                       for a, b in zip(results, results[1:])]
    # two independent counts agree: the runner's sequence gaps and the source's slot overwrites
    assert stats.captured == 90 and stats.delivered == len(results) and stats.stale == 0
    assert sum(r.frames_dropped for r in results) == stats.dropped == 90 - len(results)


def test_lossless_playback_answers_every_frame_in_order(tmp_path):
    frames = coloured_frames(6)
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(tmp_path / f"{i}.png")
    engine = SlowEngine(prepare_s=0.02)
    with open_source(f"folder:{tmp_path}", playback="lossless") as source:
        results = list(StreamRunner(engine, source, ["q"]).results())
    assert [r.frame_seq for r in results] == list(range(6))
    assert [r.text for r in results] == [f"red={10 * i} t0 t1" for i in range(6)]  # each answer is about its frame
    assert sum(r.frames_dropped for r in results) == 0


def test_several_prompts_share_one_prepare_and_partials_stream():
    engine = SlowEngine(tokens=4)
    with SyntheticSource(fps=100, size=(16, 16), max_frames=3, playback="lossless") as source:
        events = list(StreamRunner(engine, source, ["a", "b", "c"]).events())
    results = [e for e in events if isinstance(e, StreamResult)]
    partials = [e for e in events if isinstance(e, PartialText)]
    assert len(results) == 9 and engine.prepare_calls == 3 and engine.stream_calls == 9
    assert [r.prompt for r in results[:3]] == ["a", "b", "c"]
    assert [r.prepare_ms == results[0].prepare_ms for r in results[:3]] == [True] * 3
    for result in results:
        pieces = [p for p in partials if (p.frame_seq, p.prompt_index) == (result.frame_seq, result.prompt_index)]
        assert len(pieces) == 4 and "".join(p.piece for p in pieces).strip() == result.text
        assert pieces[-1].text == result.text
    first = results[0]
    assert first.captured_at <= first.inference_start_at <= first.prompt_start_at <= first.first_token_at
    assert first.first_token_at <= first.completed_at


def test_max_hz_limits_the_answer_rate():
    engine = SlowEngine()
    with SyntheticSource(fps=100, size=(16, 16)) as source:
        runner = StreamRunner(engine, source, ["q"], max_hz=5, duration_s=1.5)
        results = list(runner.results())
    assert 5 <= len(results) <= 9  # 1.5 s at 5 Hz = 7.5; unlimited would be hundreds
    gaps = np.diff([r.inference_start_at for r in results])
    assert gaps.min() > 0.15


def test_max_age_refuses_stale_frames():
    """At 4 fps with a 0.3 s model, the frame waiting in the slot is usually older than 60 ms when the model is free:
    it must be refused (counted stale) and the loop must wait for a fresh one."""
    engine = SlowEngine(prepare_s=0.3)
    with SyntheticSource(fps=4, size=(16, 16)) as source:
        results = list(StreamRunner(engine, source, ["q"], max_age_ms=60, max_frames=3).results())
        stale = source.stats.stale
    assert all(r.start_age_ms < 60 + 40 for r in results)
    assert stale >= 1


def test_callback_form_one_shot_question_and_stop():
    engine = SlowEngine(prepare_s=0.05)
    got, partial = [], []
    with SyntheticSource(fps=30, size=(16, 16)) as source:
        runner = StreamRunner(engine, source, ["standing"], on_result=got.append, on_partial=partial.append)
        runner.start()
        answer = runner.ask("one shot?", timeout_s=10)
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        runner.stop()
        runner.join(10)
    assert answer.one_shot and answer.prompt_index == -1 and answer.prompt == "one shot?"
    assert answer.text.startswith("red=")
    assert any(r.one_shot for r in got) and sum(not r.one_shot for r in got) >= 2
    assert partial and runner.stop_reason == "stopped"
    with pytest.raises(EdgeVLMError, match="stopped"):
        runner.ask("too late", timeout_s=1)


def test_stop_interrupts_a_long_answer_promptly():
    engine = SlowEngine(token_s=0.2, tokens=50)  # a 10 s answer
    with SyntheticSource(fps=30, size=(16, 16)) as source:
        runner = StreamRunner(engine, source, ["q"])
        threading.Timer(0.5, runner.stop).start()
        start = time.monotonic()
        results = list(runner.results())
    assert time.monotonic() - start < 3
    assert results == [] and runner.interrupted_answers == 1


class _FlakySource(FrameSource):
    """A live source whose grabs fail for three attempts in the middle of the run (a dropped camera)."""

    live = True
    paced = False

    def __init__(self, **kwargs):
        super().__init__("flaky", **kwargs)
        self.calls = 0
        self.reopened = 0

    def _grab(self):
        self.calls += 1
        time.sleep(0.01)
        if 10 < self.calls <= 13:
            raise OSError("camera unplugged")
        return Grabbed(image=np.full((8, 8, 3), self.calls % 256, np.uint8))

    def _recover(self):
        self.reopened += 1


def test_a_source_failing_mid_run_is_retried_and_reported_not_fatal():
    events = []
    source = _FlakySource(reconnect=ReconnectPolicy(initial_s=0.01, max_s=0.05), on_event=events.append)
    engine = SlowEngine(prepare_s=0.03)
    with source:
        results = list(StreamRunner(engine, source, ["q"], duration_s=1.0).results())
    assert source.reopened == 3 and source.stats.errors == 3 and source.stats.reconnects == 1
    assert [e["event"] for e in events] == ["error", "error", "error", "recovered"]
    assert results[-1].source_errors == 3 and results[-1].frame_seq > 10  # answers went on after the failure


def test_a_source_that_gives_up_ends_the_run_with_its_error():
    class Dying(FrameSource):
        def _grab(self):
            raise OSError("disk gone")

    runner = StreamRunner(SlowEngine(), Dying("dying", reconnect=ReconnectPolicy(initial_s=0.01, max_retries=1)),
                          ["q"])
    with pytest.raises(SourceError, match="disk gone"):
        list(runner.results())


def test_runner_validates_its_settings():
    source = SyntheticSource()
    with pytest.raises(EdgeVLMError, match="max_hz"):
        StreamRunner(SlowEngine(), source, ["q"], max_hz=0)
    with pytest.raises(EdgeVLMError, match="empty"):
        StreamRunner(SlowEngine(), source, ["  "])


def test_percentile_matches_the_definition():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(4.8)  # 1 + 0.95 * 4 on the sorted list, interpolated
    assert percentile([], 50) is None


def test_real_torch_engine_end_to_end(tiny_checkpoint):
    """The tiny random checkpoint through the loop: the streamed pieces form the answer that TorchEngine gives for
    the same frame through its own `answer` path, and the prefix is prepared once per frame."""
    from edge_vlm.engine import GenerationConfig, answer
    from edge_vlm.model.engine import TorchEngine

    engine = TorchEngine.from_checkpoint(tiny_checkpoint)
    config = GenerationConfig(max_new_tokens=6)
    frames = []
    with SyntheticSource(fps=100, size=(64, 48), max_frames=2, playback="lossless", on_frame=frames.append) as source:
        events = list(StreamRunner(engine, source, ["What is moving?", "What colour?"], generation=config).events())
    results = [e for e in events if isinstance(e, StreamResult)]
    assert [(r.frame_seq, r.prompt_index) for r in results] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for result in results:
        frame = next(f for f in frames if f.seq == result.frame_seq)
        expected = answer(engine, engine.prepare_image(frame.image), result.prompt, config=config)
        assert result.text == expected and result.first_token_ms is not None


def test_one_shot_questions_reuse_the_last_prepared_frame():
    """With no standing prompts the loop waits for questions; a question with no newer frame is answered about the
    last frame from its kept prepared image (no second vision pass); a newer frame is taken when there is one."""
    from edge_vlm.stream import PushSource

    engine = SlowEngine()
    source = PushSource()
    runner = StreamRunner(engine, source, [])
    runner.start()
    try:
        source.push(np.full((8, 8, 3), 30, np.uint8))
        first = runner.ask("first?", timeout_s=10)
        second = runner.ask("second?", timeout_s=10)
        source.push(np.full((8, 8, 3), 90, np.uint8))
        time.sleep(0.05)
        third = runner.ask("third?", timeout_s=10)
    finally:
        runner.stop()
        source.close()
        runner.join(10)
    assert (first.frame_seq, second.frame_seq, third.frame_seq) == (0, 0, 1)
    assert [first.text[:6], second.text[:6], third.text[:6]] == ["red=30", "red=30", "red=90"]
    assert engine.prepare_calls == 2 and second.prepare_ms == 0.0
