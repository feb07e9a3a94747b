"""`edge-vlm export`: a checkpoint -> a deployable bundle (ONNX, INT8/INT4, TensorRT), checked against PyTorch."""

from __future__ import annotations

import argparse

from edge_vlm.cli.args import folder, providers, thread_count

HELP = "export a checkpoint to a bundle (ONNX + INT8/INT4 + TensorRT) that runs without PyTorch, validated"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=folder, help="checkpoint directory")
    parser.add_argument("--out", required=True, type=folder, help="bundle directory to write")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--precision", choices=["fp32", "fp16", "int8", "int4"],
                           help="decoder precision (default: the target's: cpu int4, cuda fp16, jetson int4)")
    precision.add_argument("--int4", dest="precision", action="store_const", const="int4", help="= --precision int4")
    precision.add_argument("--int8", dest="precision", action="store_const", const="int8", help="= --precision int8")
    parser.add_argument("--target", default="cpu",
                        help="cpu, cuda, jetson (Jetson Orin), or a target profile .yaml (see export/targets/)")
    parser.add_argument("--tensorrt", action="store_true", default=None,
                        help="also prepare a TensorRT engine for the vision part (default on for jetson)")
    parser.add_argument("--tensorrt-precision", choices=["fp16", "int8"], default="fp16",
                        help="TensorRT vision precision; int8 is calibrated on the validation images")
    parser.add_argument("--calibration", help="LLaVA-format JSON of image+text samples: GPTQ-calibrated INT4")
    parser.add_argument("--calibration-samples", type=int, default=32, help="how many calibration samples to use")
    parser.add_argument("--quant-method", choices=["rtn", "hqq", "gptq"],
                        help="weight quantization (default rtn; gptq with --calibration)")
    parser.add_argument("--block-size", type=int, choices=[16, 32, 64, 128, 256], help="quantization block size")
    symmetric = parser.add_mutually_exclusive_group()
    symmetric.add_argument("--symmetric", dest="symmetric", action="store_true", default=None,
                           help="symmetric quantization (the default for rtn)")
    symmetric.add_argument("--asymmetric", dest="symmetric", action="store_false", default=None,
                           help="asymmetric quantization, a zero point per block (the default for gptq and hqq)")
    parser.add_argument("--image-tokens", type=int, metavar="K",
                        help="give the decoder K image tokens per image instead of every patch token (576 at full "
                             "size): the K the vision tower's CLS token attends to most, in their order; faster "
                             "prefill, answers can change (the gate measures it). Default: the target's (all)")
    parser.add_argument("--contextual-tokens", type=int, metavar="C",
                        help="with --image-tokens: C of the K tokens are merged from the dropped patches (by key "
                             "similarity) instead of dropping them (default 0)")
    parser.add_argument("--max-token-accuracy-drop", type=float, metavar="X",
                        help="the gate's limit for what --image-tokens may cost PyTorch's answer accuracy on the "
                             "validation samples, a share from 0 to 1 (default 0.01 = 1 point)")
    parser.add_argument("--val", help="validation data, LLaVA JSON like the eval split (default: synthetic world)")
    parser.add_argument("--val-samples", type=int, default=64,
                        help="validation samples for the gate (64: a 5%% accuracy-drop limit then tolerates 3 changed "
                             "answers, not 0)")
    parser.add_argument("--val-max-new-tokens", type=int, default=16, help="answer length compared by the gate")
    parser.add_argument("--allow-degraded", action="store_true",
                        help="write a bundle that fails the gate, flagged as degraded in its manifest")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier bundle at --out (or an empty folder); any other folder or file is "
                             "refused, never deleted")
    parser.add_argument("--providers", type=providers,
                        help="execution providers for the gate's run of the bundle, e.g. cuda,cpu")
    parser.add_argument("--threads", type=thread_count,
                        help="intra-op threads for the gate's run of the bundle, 1 to 4x the CPU cores")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.export.pipeline import ExportOptions, export_bundle

    for name in ("val_samples", "val_max_new_tokens", "calibration_samples"):
        if getattr(args, name) < 1:
            raise EdgeVLMError(f"--{name.replace('_', '-')} must be >= 1")
    if args.quant_method == "gptq" and not args.calibration:
        raise EdgeVLMError("--quant-method gptq needs --calibration DATA")
    options = ExportOptions(
        model=Path(args.model), out=Path(args.out), precision=args.precision, target=args.target,
        tensorrt=args.tensorrt, tensorrt_precision=args.tensorrt_precision,
        calibration=Path(args.calibration) if args.calibration else None,
        calibration_samples=args.calibration_samples, quant_method=args.quant_method, block_size=args.block_size,
        symmetric=args.symmetric, val=Path(args.val) if args.val else None, val_samples=args.val_samples,
        val_max_new_tokens=args.val_max_new_tokens, allow_degraded=args.allow_degraded, force=args.force,
        providers=args.providers, threads=args.threads,
        image_tokens=args.image_tokens, contextual_tokens=args.contextual_tokens,
        max_token_accuracy_drop=args.max_token_accuracy_drop,
    )
    export_bundle(options, log=lambda line: print(line, flush=True))
    return 0
