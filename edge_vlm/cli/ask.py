"""`edge-vlm ask`: answer a question about an image with a checkpoint or a bundle, streaming the tokens."""

from __future__ import annotations

import argparse
import sys

from edge_vlm.cli.args import Once, file_path, folder, providers, seed, thread_count

HELP = "ask a question about an image (streams the answer); multi-turn with --interactive"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=folder, help="checkpoint directory (PyTorch); default: the built-in model")
    source.add_argument("--bundle", type=folder, help="exported bundle directory (ONNX Runtime, no PyTorch needed)")
    source.add_argument("--preset", help="a RANDOM-weight model of this preset (e.g. tiny): a smoke test, not answers")
    parser.add_argument("--image", action=Once, type=file_path, help="image file (omit for a text-only question); give it once")
    parser.add_argument("question", nargs="?", help="the question")
    parser.add_argument("--interactive", "-i", action="store_true",
                        help="keep asking follow-ups from stdin, one a line; when the conversation outgrows the "
                             "context its oldest turns are dropped (the image stays); a line that is not UTF-8 or "
                             "too long even alone is refused and the session goes on (exit status 2 at the end)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=seed, default=None, help="0 to 2**32-1: the same seed, the same answer")
    parser.add_argument("--device", default=None, help="--model: torch device, e.g. cpu, cuda, cuda:0 (a bundle "
                        "takes --providers)")
    quant = parser.add_mutually_exclusive_group()
    quant.add_argument("--load-in-4bit", action="store_true", help="--model with bitsandbytes NF4")
    quant.add_argument("--load-in-8bit", action="store_true", help="--model with bitsandbytes INT8")
    parser.add_argument("--image-tokens", type=int, metavar="K",
                        help="--model: give the language model K of the image's patch tokens, those the vision "
                             "tower's CLS token attends to most (default: all); a bundle's K is fixed at export")
    parser.add_argument("--contextual-tokens", type=int, metavar="C",
                        help="with --image-tokens: C of the K tokens merged from the dropped patches (default 0)")
    parser.add_argument("--providers", type=providers,
                        help="--bundle: comma-separated ONNX Runtime execution providers (tensorrt, cuda, cpu)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="intra-op threads of ONNX Runtime (--bundle) or torch, 1 to 4x the CPU cores")


def open_engine(args: argparse.Namespace):
    """The engine for --model / --bundle / the built-in default. Heavy imports happen here. A model that sees fewer
    image tokens than its patches is announced on stderr in one line."""
    engine = _open_engine(args)
    from edge_vlm.image_tokens import reduced_note

    note = reduced_note(engine.num_image_tokens, engine.patch_tokens, engine.token_selection)
    if note:
        print(note, file=sys.stderr, flush=True)
    return engine


def _open_engine(args: argparse.Namespace):
    from edge_vlm.cli.args import check_device
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.image_tokens import checkpoint_patch_tokens
    from edge_vlm.image_tokens import choose as choose_tokens

    image_tokens, contextual = getattr(args, "image_tokens", None), getattr(args, "contextual_tokens", None)
    if args.bundle:
        from edge_vlm.runtime import BundleEngine

        engine = BundleEngine.from_bundle(args.bundle, providers=args.providers, threads=args.threads)
        _check_bundle_tokens(args.bundle, engine, image_tokens, contextual)
        if getattr(engine, "random_weights", False):
            print(f"note: {args.bundle} was exported from RANDOM weights; its answers are meaningless.", file=sys.stderr)
        return engine
    check_device(args.device)  # before transformers is imported and any weights load
    from edge_vlm.model.checkpoint import check_checkpoint_dir, read_meta
    from edge_vlm.model.engine import TorchEngine

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.preset:
        from edge_vlm.model.factory import random_model, small_tokenizer
        from edge_vlm.model.presets import get_preset, num_image_tokens

        spec = get_preset(args.preset)
        selection = choose_tokens(image_tokens, contextual, num_image_tokens(spec["vision"]))
        print(f"note: preset {args.preset} with RANDOM weights; its answers are meaningless.", file=sys.stderr)
        tokenizer = small_tokenizer()
        return TorchEngine(random_model(args.preset, tokenizer, weight_std=0.05), tokenizer,
                           token_selection=selection)

    directory = args.model or _builtin_dir()
    check_checkpoint_dir(directory)
    selection = None
    if image_tokens is not None or contextual is not None:
        patches = checkpoint_patch_tokens(directory)
        if patches is None:
            raise EdgeVLMError(f"{directory}/config.json does not give the vision tower's image_size and patch_size: "
                               "cannot check --image-tokens against the model")
        selection = choose_tokens(image_tokens, contextual, patches)
    meta = read_meta(directory)
    if meta.random_weights:
        print(f"note: {directory} has RANDOM weights ({meta.source}); its answers are meaningless.", file=sys.stderr)
    if args.load_in_4bit or args.load_in_8bit:
        from edge_vlm.export.bnb import load_quantized
        from edge_vlm.tokenizer import TextTokenizer

        model = load_quantized(directory, bits=4 if args.load_in_4bit else 8)
        return TorchEngine(model, TextTokenizer.from_dir(directory), meta.image, selection)
    return TorchEngine.from_checkpoint(directory, device=args.device, token_selection=selection)


def _check_backend_flags(args: argparse.Namespace) -> None:
    """Flags of one backend given to the other are refused, not silently ignored."""
    from edge_vlm.errors import EdgeVLMError

    if args.bundle:
        if args.load_in_4bit or args.load_in_8bit:
            raise EdgeVLMError("--load-in-4bit/8bit apply to --model, not --bundle (a bundle carries its own "
                               "precision)")
        if args.device is not None:
            raise EdgeVLMError(f"--device {args.device} applies to --model only; bundles choose providers with "
                               "--providers")
    else:
        if args.providers is not None:
            raise EdgeVLMError("--providers applies to --bundle only; a checkpoint runs on --device")


def _check_bundle_tokens(path: str, engine, image_tokens: int | None, contextual: int | None) -> None:
    """A bundle's image tokens are part of its vision graph: --image-tokens may only restate them."""
    from edge_vlm.errors import EdgeVLMError

    if image_tokens is None and contextual is None:
        return
    kept = engine.token_selection.contextual if engine.token_selection else 0
    if image_tokens not in (None, engine.num_image_tokens) or contextual not in (None, kept):
        asked = f"{image_tokens if image_tokens is not None else engine.num_image_tokens} image tokens" + (
            f" ({contextual} contextual)" if contextual else "")
        raise EdgeVLMError(f"--image-tokens/--contextual-tokens ask for {asked}, but the bundle {path} was exported "
                           f"with {engine.num_image_tokens} ({kept} contextual), fixed in its vision graph: export it "
                           "again with --image-tokens, or drop the flag")


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
    sys.stdout.flush()


# A follow-up question longer than this is refused (no model's context holds 64 KiB of text), and the rest of its
# line skipped in pieces of this size: stdin that never sends a newline (`< /dev/zero`) must not fill the memory.
MAX_LINE_BYTES = 64 * 1024
# How much of an over-long line is skipped looking for its end before stdin is given up on.
MAX_SKIP_BYTES = 16 * 1024 * 1024


def _stdin_questions(stream=None):
    """(line number, question or None, why not) for each non-blank stdin line. Read as bytes and decoded here, so a
    line that is not UTF-8 is named and skipped instead of ending the session (or reaching the tokenizer as
    surrogate escapes). A line over MAX_LINE_BYTES is refused and skipped without being kept in memory; one with no
    end after MAX_SKIP_BYTES ends the reading."""
    stream = stream if stream is not None else sys.stdin.buffer
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            if _skip_line(stream):
                yield number, None, f"is longer than {MAX_LINE_BYTES // 1024} KiB: skipped"
                continue
            yield number, None, (f"is longer than {MAX_LINE_BYTES // 1024} KiB and has no end after "
                                 f"{MAX_SKIP_BYTES // (1024 * 1024)} MiB: stopped reading stdin")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, None, (f"is not valid UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}): "
                                 "skipped")
            continue
        text = text.lstrip("\ufeff").strip() if number == 1 else text.strip()
        if text:
            yield number, text, None


def _skip_line(stream) -> bool:
    """Read past the rest of a line, a piece at a time; False when no newline or end came in MAX_SKIP_BYTES."""
    skipped = 0
    while skipped < MAX_SKIP_BYTES:
        piece = stream.readline(MAX_LINE_BYTES)
        if not piece or piece.endswith(b"\n"):
            return True
        skipped += len(piece)
    return False


def _interactive(chat) -> int:
    """Follow-up questions from stdin, one per line. A line that cannot be asked (not UTF-8, too long for the
    context even alone) is refused with one line on stderr and the session goes on; the exit status is then 2."""
    from edge_vlm.errors import EdgeVLMError

    refused = 0
    told = False
    for number, question, problem in _stdin_questions():
        try:
            if problem is not None:
                raise EdgeVLMError(f"line {number} of stdin {problem}")
            _stream_answer(chat, question)
        except EdgeVLMError as exc:
            refused += 1
            where = "" if problem is not None else f"line {number} of stdin: "
            print(f"edge-vlm ask: error: {where}{exc}", file=sys.stderr, flush=True)
        if chat.dropped_turns and not told:
            told = True
            print(f"edge-vlm ask: the conversation outgrew the model's context ({chat.engine.context_length} "
                  "tokens): its oldest turns are being dropped (the image and the system prompt stay)",
                  file=sys.stderr, flush=True)
    return 2 if refused else 0


def run(args: argparse.Namespace) -> int:
    from edge_vlm.engine import Chat, GenerationConfig, check_question
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.imaging import load_image

    if args.question is not None or not args.interactive:
        if args.question is None:
            raise EdgeVLMError("give a question (or --interactive)")
        check_question(args.question)  # empty or not UTF-8: refused before the model loads
    _check_backend_flags(args)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              seed=args.seed)
    image = load_image(args.image) if args.image else None  # fail on a bad image before loading the model
    chat = Chat(open_engine(args), image, config)
    if args.question:
        _stream_answer(chat, args.question)
    if args.interactive:
        return _interactive(chat)
    return 0
