"""`edge-vlm ask`: answer a question about an image with a checkpoint or a bundle, streaming the tokens."""

from __future__ import annotations

import argparse
import sys

HELP = "ask a question about an image (streams the answer); multi-turn with --interactive"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="checkpoint directory (PyTorch); default: the built-in model")
    source.add_argument("--bundle", help="exported bundle directory (ONNX Runtime, no PyTorch needed)")
    source.add_argument("--preset", help="a RANDOM-weight model of this preset (e.g. tiny): a smoke test, not answers")
    parser.add_argument("--image", help="image file (omit for a text-only question)")
    parser.add_argument("question", nargs="?", help="the question")
    parser.add_argument("--interactive", "-i", action="store_true", help="keep asking follow-ups from stdin")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="torch device for --model, e.g. cuda")
    quant = parser.add_mutually_exclusive_group()
    quant.add_argument("--load-in-4bit", action="store_true", help="--model with bitsandbytes NF4")
    quant.add_argument("--load-in-8bit", action="store_true", help="--model with bitsandbytes INT8")
    parser.add_argument("--providers", help="--bundle: comma-separated ONNX Runtime execution providers")
    parser.add_argument("--threads", type=int, default=None, help="--bundle: intra-op threads")


def open_engine(args: argparse.Namespace):
    """The engine for --model / --bundle / the built-in default. Heavy imports happen here."""
    from edge_vlm.errors import EdgeVLMError

    if args.bundle:
        from edge_vlm.runtime import BundleEngine

        providers = args.providers.split(",") if args.providers else None
        engine = BundleEngine.from_bundle(args.bundle, providers=providers, threads=args.threads)
        if getattr(engine, "random_weights", False):
            print(f"note: {args.bundle} was exported from RANDOM weights; its answers are meaningless.", file=sys.stderr)
        return engine
    from edge_vlm.model.checkpoint import check_checkpoint_dir, read_meta
    from edge_vlm.model.engine import TorchEngine

    if args.preset:
        from edge_vlm.model.factory import random_model, small_tokenizer
        from edge_vlm.model.presets import get_preset

        get_preset(args.preset)
        print(f"note: preset {args.preset} with RANDOM weights; its answers are meaningless.", file=sys.stderr)
        tokenizer = small_tokenizer()
        return TorchEngine(random_model(args.preset, tokenizer, weight_std=0.05), tokenizer)

    directory = args.model or _builtin_dir()
    check_checkpoint_dir(directory)
    meta = read_meta(directory)
    if meta.random_weights:
        print(f"note: {directory} has RANDOM weights ({meta.source}); its answers are meaningless.", file=sys.stderr)
    if args.load_in_4bit or args.load_in_8bit:
        from edge_vlm.export.bnb import load_quantized
        from edge_vlm.tokenizer import TextTokenizer

        model = load_quantized(directory, bits=4 if args.load_in_4bit else 8)
        return TorchEngine(model, TextTokenizer.from_dir(directory), meta.image)
    if args.device and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise EdgeVLMError("--device cuda was given but torch sees no CUDA GPU")
    return TorchEngine.from_checkpoint(directory, device=args.device)


def _builtin_dir() -> str:
    from edge_vlm.errors import EdgeVLMError

    try:
        from edge_vlm.assets import builtin_model_dir
    except ImportError as exc:
        raise EdgeVLMError("no built-in model in this installation: pass --model DIR or --bundle DIR") from exc
    return str(builtin_model_dir())


def _stream_answer(chat, question: str) -> None:
    for piece in chat.stream(question):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def run(args: argparse.Namespace) -> int:
    from edge_vlm.engine import Chat, GenerationConfig, check_question
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.imaging import load_image

    if not args.interactive:
        if args.question is None:
            raise EdgeVLMError("give a question (or --interactive)")
        check_question(args.question)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              seed=args.seed)
    image = load_image(args.image) if args.image else None  # fail on a bad image before loading the model
    if (args.load_in_4bit or args.load_in_8bit) and args.bundle:
        raise EdgeVLMError("--load-in-4bit/8bit apply to --model, not --bundle (a bundle carries its own precision)")
    chat = Chat(open_engine(args), image, config)
    if args.question:
        _stream_answer(chat, args.question)
    if args.interactive:
        for line in sys.stdin:
            if line.strip():
                _stream_answer(chat, line.strip())
    return 0
