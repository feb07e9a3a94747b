"""`edge-vlm data`: write the synthetic world (`synth`) or check a training data file (`validate`).

Light imports only at the top (argparse, stdlib): the work is imported inside run().
"""

from __future__ import annotations

import argparse
import os
import sys

from edge_vlm.cli.args import count, seed
from edge_vlm.data import MAX_SAMPLES

# `data validate`'s length check: a context of 1 Mi tokens is far beyond any model this toolkit trains (Phi-2: 2048),
# and no picture gives more image tokens than a context holds.
MAX_CONTEXT_LENGTH = 1 << 20

HELP = "training data: write the synthetic world, or validate a LLaVA / ShareGPT file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    synth = sub.add_parser("synth", help="write the synthetic world (pictures, stage-1/2 and SFT data, eval split)",
                           description="Write the synthetic world in the real training formats: images/, "
                                       "pretrain.json, finetune.json, sft.json, eval.json and world.json.")
    synth.add_argument("--out", required=True, help="directory to create (must not exist, or be empty; not the "
                                                     "current folder or one above it); written beside it and moved "
                                                     "into place when complete")
    synth.add_argument("--seed", type=seed, default=0, help="random seed, 0 to 2**32-1 (default 0)")
    synth.add_argument("--train", type=count(1, MAX_SAMPLES), default=10_000,
                       help=f"training pictures, 1 to {MAX_SAMPLES:,} (default 10000)")
    synth.add_argument("--eval", type=count(0, MAX_SAMPLES), default=1_400, dest="eval_size",
                       help=f"held-out questions, one picture each, 0 to {MAX_SAMPLES:,} (default 1400: 200 per "
                            "question type)")
    synth.add_argument("--sft", type=count(0, MAX_SAMPLES), default=None,
                       help=f"ShareGPT text conversations, 0 to {MAX_SAMPLES:,} (default train/5)")
    synth.add_argument("--text-only", type=count(0, MAX_SAMPLES), default=None,
                       help=f"text-only conversations mixed into finetune.json, 0 to {MAX_SAMPLES:,} "
                            "(default train/10)")
    synth.add_argument("--image-size", type=int, default=112,
                       help="picture side in pixels, 32 to 4096 (default 112)")
    synth.add_argument("--extra-questions", type=count(0, 100), default=0,
                       help="questions added to every stage-2 conversation beyond its 3-7, 0 to 100 (default 0)")
    synth.add_argument("--caption-counts", action="store_true",
                       help="end every stage-1 caption with the count of each shape")
    synth.add_argument("--force", action="store_true",
                       help="replace --out if it holds an earlier synthetic world (its world.json); any other "
                            "non-empty folder is never replaced")
    synth.add_argument("--quiet", action="store_true", help="no progress bars")

    check = sub.add_parser("validate", help="check a data file and report bad samples by kind",
                           description="Read a LLaVA JSON / ShareGPT file and report every problem (missing image, "
                                       "<image> missing or doubled, roles not alternating, empty turns, too long) "
                                       "and every picture that training could not read (decoded as training "
                                       "decodes it). The report goes to stdout; when a problem is found, a "
                                       "one-line summary goes to stderr and the exit status is 2.")
    check.add_argument("file", help="a .json or .jsonl file")
    check.add_argument("--format", choices=("llava", "sharegpt"), default="llava")
    check.add_argument("--stage", choices=("sft", "pretrain", "finetune"), default="finetune")
    check.add_argument("--image-root", default=None, help="folder the records' image paths are relative to "
                                                          "(default: the data file's folder)")
    check.add_argument("--tokenizer", default=None, help="a directory with tokenizer.json (enables the length check)")
    check.add_argument("--context-length", type=count(1, MAX_CONTEXT_LENGTH), default=2048,
                       help=f"the model's context in tokens, 1 to {MAX_CONTEXT_LENGTH:,} (default 2048)")
    check.add_argument("--num-image-tokens", type=count(1, MAX_CONTEXT_LENGTH), default=576,
                       help=f"tokens one picture takes, 1 to {MAX_CONTEXT_LENGTH:,} (default 576: CLIP ViT-L/14 at "
                            "336 px)")
    check.add_argument("--aspect", choices=("pad", "square"), default=None,
                       help="preprocessing the pictures are checked for (default: square for pretrain, else pad)")
    check.add_argument("--no-decode", action="store_true",
                       help="check that the picture files exist, without decoding them (faster)")
    parser.set_defaults(_parser=parser)


def shown(path: str) -> str:
    """A path as it can be printed: a Linux path is bytes, and one that is not UTF-8 (its bytes are kept by Python
    as surrogates) would make print() fail; those bytes show as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def run(args: argparse.Namespace) -> int:
    from edge_vlm.errors import EdgeVLMError

    if args.data_command == "synth":
        return _synth(args)
    if args.data_command == "validate":
        return _validate(args)
    args._parser.print_help()
    raise EdgeVLMError("choose a subcommand: synth or validate")


def _synth(args: argparse.Namespace) -> int:
    from edge_vlm.data.synth import shell_command, write_world

    command = shell_command(["edge-vlm", *sys.argv[1:]]) if sys.argv[1:] else None
    manifest = write_world(args.out, seed=args.seed, train=args.train, eval_size=args.eval_size, sft=args.sft,
                           text_only=args.text_only, image_size=args.image_size, extra_questions=args.extra_questions,
                           caption_counts=args.caption_counts, force=args.force,
                           progress=not args.quiet, command=command)
    counts = manifest["counts"]
    print(f"wrote the synthetic world to {shown(args.out)}: {counts['train_images']} training pictures "
          f"({counts['pretrain']} captions, {counts['finetune']} conversations), {counts['sft']} SFT conversations, "
          f"{counts['eval']} eval questions; seed {manifest['seed']}, {manifest['image_size']} px")
    print("eval questions per type: " + ", ".join(f"{k} {v}" for k, v in manifest["question_types"]["eval"].items()))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge_vlm.data.formats import read_llava_json, read_sharegpt
    from edge_vlm.data.validate import validate
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.imaging import ImageConfig
    from edge_vlm.tokenizer import TextTokenizer

    samples = (read_sharegpt if args.format == "sharegpt" else read_llava_json)(args.file)
    if not samples:  # "validated 0 samples, 0 with problems" would pass a file training refuses
        raise EdgeVLMError(f"{args.file} holds no samples: nothing to validate or train on")
    tokenizer = TextTokenizer.from_dir(args.tokenizer) if args.tokenizer else None
    image_root = args.image_root if args.image_root is not None else Path(args.file).parent
    aspect = args.aspect or ("square" if args.stage == "pretrain" else "pad")
    _, report = validate(samples, stage=args.stage, image_root=image_root, tokenizer=tokenizer,
                         num_image_tokens=args.num_image_tokens, context_length=args.context_length,
                         on_error="skip", source=args.file, log=print, decode_images=not args.no_decode,
                         image_config=ImageConfig(aspect=aspect))
    if not report.ok:
        raise EdgeVLMError(report.one_line())
    return 0
