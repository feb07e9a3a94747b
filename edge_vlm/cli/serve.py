"""`edge-vlm serve`: one model behind an OpenAI-compatible HTTP API (and a live page of a running stream)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from edge_vlm.cli.args import frame_rate, non_negative_number, nonempty_name, positive_number, thread_count

HELP = "serve a model over HTTP: OpenAI-compatible chat API, health, Prometheus metrics, a live stream page"

API_KEY_ENV = "EDGE_VLM_API_KEY"
MiB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--bundle", metavar="DIR", help="an exported bundle (ONNX Runtime, no PyTorch needed)")
    model.add_argument("--model", metavar="DIR", help="a checkpoint directory (PyTorch); default: the built-in model")
    parser.add_argument("--model-name", metavar="NAME", type=nonempty_name, help="the model's id in the API (default: the directory's "
                        "name, edge-vlm-builtin for the built-in model)")
    parser.add_argument("--providers", help="--bundle: comma-separated ONNX Runtime execution providers")
    parser.add_argument("--threads", type=thread_count, metavar="N",
                        help="intra-op threads for inference, 1 to 4x the CPU cores")
    parser.add_argument("--device", help="--model: torch device, e.g. cuda")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                     "only; 0.0.0.0 for every interface, then set --api-key)")
    net.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    net.add_argument("--api-key", metavar="KEY", default=os.environ.get(API_KEY_ENV),
                     help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, else no key)")
    net.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="allow browser pages from ORIGIN (e.g. http://localhost:3000; repeat; off by default)")
    net.add_argument("--allow-remote-images", action="store_true",
                     help="let image_url be an http(s) URL the server fetches (default: data URLs only)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-queue", type=int, default=16, metavar="N", help="requests waiting for the model before new ones "
                        "get 429 (default 16)")
    limits.add_argument("--request-timeout", type=positive_number, default=120.0, metavar="S",
                        help="seconds a request may take, queue wait included (default 120)")
    limits.add_argument("--max-image-bytes", type=int, default=8 * MiB, metavar="N",
                        help="largest image file accepted (default 8 MiB)")
    limits.add_argument("--max-image-pixels", type=int, default=4096 * 4096, metavar="N",
                        help="largest width x height accepted (default 4096 x 4096)")
    limits.add_argument("--image-cache-mb", type=non_negative_number, default=1024.0, metavar="MB",
                        help="memory for reused image prefixes (vision features + KV cache), least recently used "
                             "dropped first; 0 turns reuse off (default 1024; a full-size prefix takes ~250-500 MB)")
    live = parser.add_argument_group("live stream (the page at /)")
    live.add_argument("--source", metavar="S", help="run the stream runner on this source inside the server "
                      "(camera:0, video:FILE, rtsp://..., folder:DIR, synthetic[:FPS], bag:PATH)")
    live.add_argument("--prompt", action="append", default=[], metavar="P", help="a question about every answered "
                      "frame (repeat; needs --source)")
    live.add_argument("--topic", metavar="T", help="the image topic of a bag source")
    live.add_argument("--max-hz", type=positive_number, default=2.0, metavar="N",
                      help="at most N frames answered per second (default 2, leaving the model to the API "
                           "between frames; requests always go first)")
    live.add_argument("--fps", type=frame_rate, help="frame rate of a folder or the synthetic scene (up to 1000)")
    live.add_argument("--size", default="320x240", metavar="WxH", help="synthetic frame size (default 320x240)")
    live.add_argument("--stream-max-new-tokens", type=int, default=32, metavar="N",
                      help="answer length limit of the stream's prompts (default 32)")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")


def _check_args(args) -> None:
    """Everything that can be refused before loading the model."""
    from pathlib import Path

    from edge_vlm.errors import EdgeVLMError

    if not 0 <= args.port <= 65535:
        raise EdgeVLMError(f"--port {args.port} is not a TCP port (0-65535; 0 picks a free one)")
    for flag, value, low in (("--max-queue", args.max_queue, 1), ("--max-image-bytes", args.max_image_bytes, 1),
                             ("--max-image-pixels", args.max_image_pixels, 1),
                             ("--stream-max-new-tokens", args.stream_max_new_tokens, 1)):
        if value < low:
            raise EdgeVLMError(f"{flag} must be >= {low}, got {value}")
    if args.api_key is not None and not args.api_key.strip():
        raise EdgeVLMError(f"the API key is empty (--api-key or ${API_KEY_ENV}): give a key or leave it unset")
    for origin in args.cors_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise EdgeVLMError(f"--cors-origin {origin!r} must look like http://host:port or https://host (or *)")
    if args.prompt and not args.source:
        raise EdgeVLMError("--prompt is for the live stream: give --source too (e.g. --source camera:0)")
    if args.source and not args.prompt:
        raise EdgeVLMError("--source needs at least one --prompt: the question asked about every frame")
    for flag, value in (("--model", args.model), ("--bundle", args.bundle)):
        if value is not None and not Path(value).is_dir():  # before importing torch or ONNX Runtime (seconds)
            raise EdgeVLMError(f"{flag} {value} is not a directory: give the {flag[2:]}'s folder")
    if args.bundle is None and (args.providers is not None):
        raise EdgeVLMError("--providers is for --bundle (a checkpoint runs on --device)")
    if args.bundle is not None and args.device is not None:
        raise EdgeVLMError("--device is for --model checkpoints; a bundle takes --providers")


def _require_extra() -> None:
    from edge_vlm.errors import MissingDependencyError

    for module in ("starlette", "uvicorn", "pydantic", "prometheus_client"):
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingDependencyError(f"{module} is needed to serve but is not installed: pip install "
                                         f"'edge-vlm[serve]' ({exc})") from exc


def listen(host: str, port: int):
    """A listening socket, or one line saying why not (port taken, address not on this machine)."""
    import socket

    from edge_vlm.errors import EdgeVLMError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise EdgeVLMError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise EdgeVLMError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _open_engine(args):
    """The engine exactly as `edge-vlm ask` opens it (same defaults, so the answers are the same), and what /health
    says about it."""
    from pathlib import Path

    from edge_vlm.cli.ask import open_engine

    ask_args = argparse.Namespace(bundle=args.bundle, model=args.model, preset=None, providers=args.providers,
                                  threads=args.threads, device=args.device, load_in_4bit=False, load_in_8bit=False)
    engine = open_engine(ask_args)
    if args.bundle:
        manifest = engine.bundle.manifest
        info = {"backend": "bundle", "precision": manifest.get("precision", {}).get("decoder"),
                "precisions": manifest.get("precision", {}),
                "provider": engine.providers["decoder"][0], "providers": engine.providers,
                "random_weights": bool(engine.random_weights)}
        name = Path(args.bundle).resolve().name
    else:
        from edge_vlm.cli.ask import _builtin_dir
        from edge_vlm.model.checkpoint import read_meta

        path = Path(args.model) if args.model else None
        meta_dir = path or Path(_builtin_dir())
        if args.threads:  # `ask` leaves torch's thread count alone; a server is told
            import torch

            torch.set_num_threads(args.threads)
        info = {"backend": "torch", "precision": str(engine.dtype).replace("torch.", ""),
                "provider": f"torch:{engine.device}", "random_weights": bool(read_meta(meta_dir).random_weights)}
        name = path.resolve().name if path else "edge-vlm-builtin"
    info.update(context_length=engine.context_length, num_image_tokens=engine.num_image_tokens)
    return engine, info, args.model_name or name


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    _require_extra()
    import uvicorn

    from edge_vlm.engine import GenerationConfig
    from edge_vlm.serve.app import Server, Settings, create_app
    from edge_vlm.serve.images import ImageLimits
    from edge_vlm.serve.worker import ModelWorker

    def note(message: str) -> None:
        print(f"edge-vlm serve: {message}", file=sys.stderr, flush=True)

    source = None
    if args.source:  # a bad source spec fails before the model loads
        from edge_vlm.cli.stream import _size
        from edge_vlm.stream import open_source

        source = open_source(args.source, topic=args.topic, fps=args.fps, size=_size(args.size),
                             on_event=lambda e: note(f"source {e['source']}: {e['event']}: {e['message']}"))
    sock = listen(args.host, args.port)
    live = worker = None
    try:
        engine, info, model_id = _open_engine(args)
        limits = ImageLimits(max_bytes=args.max_image_bytes, max_pixels=args.max_image_pixels,
                             allow_remote=args.allow_remote_images)
        worker = ModelWorker(engine, max_queue=args.max_queue, cache_bytes=int(args.image_cache_mb * MiB),
                             limits=limits)
        worker.warm_up()
        worker.start()
        if source is not None:
            from edge_vlm.serve.live import LiveView

            live = LiveView(engine, worker.lock, source, args.prompt, args.max_hz,
                            GenerationConfig(max_new_tokens=args.stream_max_new_tokens), worker.metrics).start()
        settings = Settings(model_id=model_id, info=info, api_key=args.api_key, cors_origins=args.cors_origin,
                            request_timeout_s=args.request_timeout, limits=limits)
        app = create_app(worker, settings, live)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        if not _loopback(host) and not args.api_key:
            note(f"WARNING: listening on {host} without --api-key: anyone who can reach this port can use the model")
        note(f"{model_id} ({info['backend']}, {info['precision']}, {info['provider']}) on http://{shown}:{port} "
             "(Ctrl-C stops)")
        config = uvicorn.Config(app, http="edge_vlm.serve.protocol:H11Protocol", lifespan="off", log_level="warning",
                                access_log=args.access_log, timeout_graceful_shutdown=3)
        with _signals_end_quietly() as received:
            Server(config, worker).run(sockets=[sock])
    finally:
        if live is not None:
            live.stop()
        elif source is not None:
            source.close()
        if worker is not None:
            worker.close()
        sock.close()
    note(f"stopped ({received[0]})" if received else "stopped")
    return 0


@contextlib.contextmanager
def _signals_end_quietly():
    """uvicorn shuts down gracefully on SIGINT / SIGTERM and then raises the signal again for the handler that was
    there before it; this one records it, so that a server stopped on purpose cleans up and exits 0 instead of
    dying on a KeyboardInterrupt (SIGINT) or without cleanup (SIGTERM)."""
    received: list[str] = []

    def record(signum, _frame):
        received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
