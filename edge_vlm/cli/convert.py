"""`edge-vlm convert SRC DST`: a released LLaVA-Phi checkpoint (LP layout) -> the project's checkpoint format."""

from __future__ import annotations

import argparse

HELP = "convert a released LLaVA-Phi checkpoint directory (LP layout) into edge-vlm's format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="LP checkpoint directory: config.json (model_type llava_phi), the weights "
                        "(model.safetensors or pytorch_model.bin, or shards + their .index.json) and the tokenizer "
                        "(tokenizer.json, or vocab.json + merges.txt); see docs/checkpoint-layout.md")
    parser.add_argument("dst", help="output checkpoint directory")
    parser.add_argument("--force", action="store_true", help="replace DST if it is an earlier edge-vlm checkpoint or an empty folder")


def run(args: argparse.Namespace) -> int:
    from edge_vlm.model.convert import convert_lp_checkpoint

    out = convert_lp_checkpoint(args.src, args.dst, force=args.force)
    print(f"converted {args.src} -> {out}")
    return 0
