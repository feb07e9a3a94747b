"""`edge-vlm stream`: answer prompts about the newest frame of a camera, video, URL, folder, synthetic scene or bag."""

from __future__ import annotations

import argparse
import json
import sys

from edge_vlm.cli.args import folder, frame_rate, positive_number, seed, thread_count

HELP = "answer prompts about a live frame source (camera, video, RTSP, folder, synthetic, rosbag2), newest frame first"

# Bounds of the synthetic scene's --size, checked before anything is drawn: one 8192x8192 RGB frame is 200 MB.
MIN_SIDE, MAX_SIDE = 8, 8192
# Undecodable frames named on stderr before the rest are only counted (bad_frames in the summary).
SKIPPED_SHOWN = 10

SOURCE_HELP = ("0 | camera:N | video:FILE | FILE.mp4 | rtsp://... | http://... | folder:DIR | synthetic[:FPS] | "
               "bag:PATH (with --topic)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--bundle", metavar="DIR", type=folder, help="an exported bundle (ONNX runtime, no torch)")
    model.add_argument("--model", metavar="DIR", type=folder, help="a checkpoint directory (PyTorch)")
    parser.add_argument("--source", required=True, metavar="S", help=SOURCE_HELP)
    parser.add_argument("--prompt", action="append", required=True, metavar="P",
                        help="a question asked about every answered frame (repeat for several; they share the "
                             "image's prefill)")
    parser.add_argument("--topic", metavar="T", help="the image topic of a bag source (Image or CompressedImage)")
    parser.add_argument("--max-hz", type=positive_number, metavar="N", help="at most N frames answered per second "
                        "(default: as fast as the model goes)")
    parser.add_argument("--max-age-ms", type=positive_number, metavar="MS", help="never answer about a frame older than this")
    parser.add_argument("--duration", type=positive_number, metavar="S", help="stop after S seconds")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after answering N frames")
    parser.add_argument("--jsonl", metavar="PATH", help="write every answer with its timings as JSON lines")
    parser.add_argument("--record", metavar="PATH", help="record the frames with the answers drawn on them "
                        "(.mp4 mp4v, .avi MJPG, .mkv FFV1)")
    parser.add_argument("--out-bag", metavar="PATH", help="write the answers to a new rosbag2 (std_msgs/String on "
                        "/edge_vlm/answer and JSON on /edge_vlm/result, stamped with the source frames)")
    parser.add_argument("--playback", choices=("realtime", "lossless"), default="realtime",
                        help="files, folders, bags, synthetic: realtime drops frames as a robot would; lossless "
                             "answers every frame (default: realtime)")
    parser.add_argument("--speed", type=positive_number, default=1.0, help="realtime playback speed factor (default 1)")
    parser.add_argument("--fps", type=frame_rate, help="frame rate of a folder (default 10) or the synthetic scene "
                        "(default 30), up to 1000")
    parser.add_argument("--size", default="320x240", metavar="WxH",
                        help=f"synthetic frame size, {MIN_SIDE} to {MAX_SIDE} pixels a side (default 320x240)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default 32)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=seed, help="0 to 2**32-1: the same seed, the same answers")
    parser.add_argument("--threads", type=thread_count, help="CPU threads for inference, 1 to 4x the cores")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="--model only: load the checkpoint in this dtype (default: as saved)")
    parser.add_argument("--device", help="--model only: torch device, e.g. cpu, cuda, cuda:0 (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="print only the final summary line")


def _size(text: str):
    from edge_vlm.errors import EdgeVLMError

    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EdgeVLMError(f"--size must look like 320x240, got {text!r}") from None
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise EdgeVLMError(f"--size {text}: each side must be {MIN_SIDE} to {MAX_SIDE} pixels")
    return width, height


def _check_outputs(args) -> None:
    """Fail before opening the source or loading the model when an output cannot be written, or would replace a
    file an earlier stream did not write."""
    from pathlib import Path

    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.fileio import check_output_file, check_output_folder
    from edge_vlm.stream.sinks import VIDEO_CODECS, is_answers_jsonl

    for flag, value, what in (("--jsonl", args.jsonl, "JSONL output"), ("--record", args.record, "recording"),
                              ("--out-bag", args.out_bag, "output bag")):
        if value is None:
            continue
        path = Path(value)
        if flag == "--out-bag" and (path.exists() or path.is_symlink()):
            raise EdgeVLMError(f"--out-bag {path} already exists: bags are never overwritten, choose a new path")
        if flag != "--out-bag" and path.is_dir():
            raise EdgeVLMError(f"{flag} {path} is a directory: give a file path")
        if flag == "--record" and path.suffix.lower() not in VIDEO_CODECS:
            raise EdgeVLMError(f"--record {path} must end in one of {', '.join(VIDEO_CODECS)} (H.264 writing is not "
                               "available in the OpenCV wheels)")
        # OpenCV writes no metadata, so an earlier recording cannot be told from a user's video: only an empty
        # file is replaced. The JSONL log is recognised by its first line.
        if flag == "--record" and path.is_file() and path.stat().st_size > 0:
            raise EdgeVLMError(f"{path} exists and a video is never replaced (edge-vlm cannot tell its own "
                               "recordings from others'): choose another path or remove it first")
        if flag != "--out-bag":
            check_output_file(path, what, is_answers_jsonl if flag == "--jsonl" else None)
        check_output_folder(path.parent, f"folder of the {what}")  # proven writable; nothing created stays


def _check_text_arguments(args) -> None:
    """Prompts (and the bag topic) must be UTF-8: checked before the model loads."""
    from edge_vlm.engine import check_question

    for prompt in args.prompt:
        check_question(prompt, f"--prompt {prompt!r}")
    if args.topic is not None:
        check_question(args.topic, "--topic")


def run(args) -> int:
    import signal

    from edge_vlm.engine import GenerationConfig
    from edge_vlm.stream import PartialText, StreamRunner, open_source
    from edge_vlm.stream.engines import load_engine
    from edge_vlm.stream.sinks import JsonlSink, VideoRecorder
    from edge_vlm.stream.stats import RssMonitor, format_summary

    skipped_shown = [0]

    def note(message: str) -> None:
        print(f"edge-vlm stream: {message}", file=sys.stderr, flush=True)

    def on_event(event: dict) -> None:
        if args.quiet:  # --quiet: only the summary (which counts errors, reconnects and undecodable frames)
            return
        # a source with many undecodable frames would flood the terminal: the first few are named, all are counted
        if event["event"] == "skipped":
            skipped_shown[0] += 1
            if skipped_shown[0] > SKIPPED_SHOWN:
                if skipped_shown[0] == SKIPPED_SHOWN + 1:
                    note(f"source {event['source']}: more undecodable frames skipped (the summary counts them: "
                         "bad_frames)")
                return
        note(f"source {event['source']}: {event['event']}: {event['message']}")

    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed)
    _check_text_arguments(args)
    if args.model is not None:
        from edge_vlm.cli.args import check_device

        check_device(args.device)  # a bundle with --device is refused by load_engine
    size = _size(args.size)
    _check_outputs(args)
    source = open_source(args.source, topic=args.topic, fps=args.fps, size=size, playback=args.playback,
                         speed=args.speed, on_event=on_event)
    engine, info = load_engine(model=args.model, bundle=args.bundle, threads=args.threads, dtype=args.dtype,
                               device=args.device)
    if info.get("random_weights") and not args.quiet:  # the summary says random_weights too
        note(f"{info['path']} has RANDOM weights: the answers are noise, only the timings mean something")

    runner = StreamRunner(engine, source, args.prompt, max_hz=args.max_hz, max_age_ms=args.max_age_ms,
                          generation=generation, max_frames=args.max_frames, duration_s=args.duration)
    sinks = []
    received = []
    memory = RssMonitor()

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if runner.stopping:  # a second signal: stop waiting for the model
            raise KeyboardInterrupt
        received.append(name)
        runner.stop(f"{name} received")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    live = sys.stdout.isatty() and not args.quiet
    errors = []
    failed = False
    try:
        source.open()
        if args.jsonl:
            sinks.append(JsonlSink(args.jsonl, extra={"source": source.name, "backend": info["backend"]}))
        if args.out_bag:
            from edge_vlm.stream.bag import BagAnswerWriter

            sinks.append(BagAnswerWriter(args.out_bag))
        if args.record:
            recorder = VideoRecorder(args.record, fps=source.nominal_fps)
            sinks.append(recorder)
            source.on_frame = recorder.tap
        started = set()
        for event in runner.events():
            if isinstance(event, PartialText):
                if live:
                    key = (event.frame_seq, event.prompt_index)
                    if key not in started:
                        started.add(key)
                        print(f"[frame {event.frame_seq}] {event.prompt} -> ", end="", flush=True)
                    print(event.piece, end="", flush=True)
                continue
            for sink in sinks:
                sink.write(event)
            memory.sample(runner.stats.answers)
            if live:
                print(f"  ({event.frame_age_ms:.0f} ms, {event.frames_dropped} dropped)", flush=True)
            elif not args.quiet:
                print(f"[frame {event.frame_seq}] {event.prompt} -> {event.text} ({event.frame_age_ms:.0f} ms, "
                      f"{event.frames_dropped} dropped)", flush=True)
    except BaseException:
        failed = True
        raise
    finally:
        # Every way out (end, signal, a source that failed for good, an error) closes the outputs and, once the
        # loop has answered (or ended without an error), prints the summary; an error then still reaches the CLI's
        # one-line report.
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        source.close()
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # close every sink even if one fails
                errors.append(f"{type(sink).__name__}: {exc}")
        if live:
            print(flush=True)
        # A run that failed before its first answer (a damaged model, a source with no readable frame) has no
        # figures worth a summary: the error is the one line it prints.
        if runner.started_mono is not None and not (failed and runner.stats.answers == 0):
            summary = runner.summary({
                "backend": info["backend"], "model": info["path"], "dtype": info.get("dtype"),
                "device": info.get("device"), "threads": args.threads,
                "random_weights": bool(info.get("random_weights")), "source": source.name,
                "prompts": len(args.prompt), "max_hz": args.max_hz, "playback": args.playback,
                "signal": received[0] if received else None, **memory.summary()})
            note(format_summary(summary))
            print(json.dumps({"summary": summary}, allow_nan=False), flush=True)  # strict JSON, always
        for error in errors:
            note(f"could not finish an output: {error}")
    return 1 if errors else 0
