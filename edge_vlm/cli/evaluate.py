"""`edge-vlm eval`: the paper's benchmarks on a checkpoint or a bundle, or several of them side by side."""

from __future__ import annotations

import argparse
import json
import sys

from edge_vlm.cli.args import folder, providers, thread_count

HELP = "evaluate on the paper's benchmarks (sqa, pope, mme, vqav2, gqa, textvqa, vizwiz, mmbench, mmvet, synth)"
BENCHMARK_NAMES = ("sqa", "pope", "mme", "vqav2", "gqa", "textvqa", "vizwiz", "mmbench", "mmvet", "synth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR", type=folder, help="checkpoint directory (PyTorch)")
    source.add_argument("--bundle", metavar="DIR", type=folder, help="exported bundle directory (ONNX Runtime)")
    source.add_argument("--compare", nargs="+", metavar="SRC", type=folder,
                        help="several checkpoints and/or bundles (kind detected); deltas are against the first. "
                             "DIR@K (or DIR@KcC) answers with K of the model's image tokens, C of them merged "
                             "(as `export --image-tokens K --contextual-tokens C`; --model DIR@K too)")
    source.add_argument("--answers", metavar="FILE",
                        help="no model: score an existing LLaVA-format answers .jsonl and write its submission files")
    parser.add_argument("--benchmark", action="append", metavar="NAME",
                        help=f"one of {', '.join(BENCHMARK_NAMES)}; repeat for several (each with its --data)")
    parser.add_argument("--data", action="append", metavar="DIR",
                        help="the benchmark's folder as laid out by LLaVA's docs/Evaluation.md, or LLaVA's "
                             "playground/data/eval root; repeat in the order of --benchmark")
    parser.add_argument("--out", metavar="DIR", default="eval-results",
                        help="results root: answers and scores go to OUT/<source>/<benchmark>/ (default eval-results)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N questions of each benchmark")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="default: 128 (1024 for mmvet), as LLaVA's evaluation scripts")
    parser.add_argument("--question-file", metavar="FILE", help="use this question file instead of the default")
    parser.add_argument("--image-folder", metavar="DIR", help="images are relative to this folder")
    parser.add_argument("--aspect", default="auto", choices=("auto", "model", "pad", "square"),
                        help="image preprocessing: auto = LP's per benchmark (square for sqa and mmvet, else the "
                             "model's own); model = always the model's own")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier answers in the output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list", action="store_true", help="list the benchmarks, their files and what is scored")
    parser.add_argument("--device", default=None, help="torch device for checkpoints, e.g. cpu, cuda, cuda:0")
    parser.add_argument("--providers", type=providers,
                        help="bundles: comma-separated ONNX Runtime execution providers (tensorrt, cuda, cpu)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="bundles: intra-op threads, 1 to 4x the CPU cores")


def _benchmark_pairs(args) -> list[tuple[str, str]]:
    from edge_vlm.errors import EdgeVLMError

    names, dirs = args.benchmark or [], args.data or []
    if not names:
        raise EdgeVLMError("--benchmark is required (see --list)")
    if not dirs:
        raise EdgeVLMError("--data DIR is required: the benchmark's evaluation files")
    if len(dirs) == 1:
        dirs = dirs * len(names)  # one LLaVA playground/data/eval root for all of them
    if len(dirs) != len(names):
        raise EdgeVLMError(f"{len(names)} --benchmark but {len(dirs)} --data: give one --data, or one per benchmark")
    if len(names) > 1 and (args.question_file or args.image_folder):
        raise EdgeVLMError("--question-file / --image-folder apply to a single --benchmark")
    for flag, value in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise EdgeVLMError(f"{flag} must be >= 1, got {value}")
    return list(zip(names, dirs))


def _check_backend_flags(args) -> None:
    """--device is for checkpoints, --providers for bundles: one given to the other is refused, not ignored; the
    device is checked against this machine before the first model loads."""
    from edge_vlm.cli.args import check_device
    from edge_vlm.errors import EdgeVLMError

    if args.bundle is not None and args.device is not None:
        raise EdgeVLMError(f"--device {args.device} applies to checkpoints only; bundles choose providers with "
                           "--providers")
    if args.providers is not None and args.bundle is None and not args.compare:
        raise EdgeVLMError("--providers applies to bundles only; a checkpoint runs on --device")
    if args.bundle is None:
        check_device(args.device)


def _sources(args):
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.eval.engines import make_sources

    if args.compare:
        if len(args.compare) < 2:
            raise EdgeVLMError("--compare needs at least two checkpoints or bundles")
        return make_sources(args.compare)
    if args.model:
        return make_sources([args.model], "model")
    if args.bundle:
        return make_sources([args.bundle], "bundle")
    try:
        from edge_vlm.assets import builtin_model_dir
    except ImportError as exc:
        raise EdgeVLMError("give --model DIR, --bundle DIR or --compare SRC SRC ...") from exc
    return make_sources([str(builtin_model_dir())], "model")


def _list() -> int:
    from edge_vlm.eval.benchmarks import BENCHMARKS

    for name, cls in BENCHMARKS.items():
        bench = cls()
        images = f"{bench.image_folders[0]}/" if bench.image_folders else "inside the question file"
        print(f"{name:8s} {bench.title}: LLaVA folder {bench.llava_folder}/, questions {bench.question_files[0]}, "
              f"images {images}")
        print(f"{'':8s} offline: {bench.offline}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    from edge_vlm.eval.benchmarks.base import write_json_atomic, write_text_atomic
    from edge_vlm.eval.compare import (
        compare_sources,
        comparison_files,
        is_comparison_json,
        is_comparison_markdown,
    )
    from edge_vlm.fileio import check_output_file

    pairs = _benchmark_pairs(args)
    if args.answers:
        return _score_file(args, pairs)
    _check_backend_flags(args)
    sources = _sources(args)
    if len(sources) > 1:  # the table's files: checked before any source is evaluated
        for path, ours in zip(comparison_files(args.out, [name for name, _ in pairs]),
                              (is_comparison_markdown, is_comparison_json)):
            check_output_file(path, "comparison", ours)
    open_kwargs = {"device": args.device, "threads": args.threads, "providers": args.providers}
    try:
        comparison = compare_sources(
            sources, pairs, args.out, open_kwargs=open_kwargs, limit=args.limit,
            max_new_tokens=args.max_new_tokens, question_file=args.question_file, image_folder=args.image_folder,
            aspect=args.aspect, overwrite=args.overwrite, progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"answers so far are kept under {args.out}; run the same command again to resume", file=sys.stderr)
        raise
    for label, by_bench in comparison.results.items():
        for name, result in by_bench.items():
            print(f"{label} / {name}: {result.asked} questions, {result.answered_now} answered now, "
                  f"{result.resumed} from an earlier run, {result.images_prepared} images prepared, "
                  f"{result.seconds:.1f} s -> {result.out_dir}")
            if result.scores is None:
                print(f"  not scored offline: {_offline(name)}")
    table = _print_table(comparison)
    if len(sources) > 1:
        markdown, data = comparison_files(args.out, [name for name, _ in pairs])
        write_text_atomic(markdown, table + "\n")
        write_json_atomic(data, comparison.to_dict(), indent=2)
        print(f"\ncomparison written to {markdown} and {data.name}")
    print(json.dumps(comparison.to_dict()))
    return 0


def _print_table(comparison) -> str:
    table = comparison.markdown(detail=True)
    print()
    print(table)
    return table


def _score_file(args, pairs) -> int:
    from pathlib import Path

    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.eval.compare import Comparison
    from edge_vlm.eval.runner import score_answer_file

    if len(pairs) != 1:
        raise EdgeVLMError("--answers scores one --benchmark at a time")
    name, data = pairs[0]
    label = Path(args.answers).stem
    result = score_answer_file(name, data, args.answers, out_dir=Path(args.out) / label / name, label=label,
                               question_file=args.question_file, image_folder=args.image_folder, limit=args.limit)
    print(f"{label} / {name}: {len(result.answers)} of {result.asked} questions answered in {args.answers} "
          f"-> {result.out_dir}")
    if result.scores is None:
        print(f"  not scored offline: {_offline(name)}")
    comparison = Comparison([label], [name], {label: {name: result}})
    _print_table(comparison)
    print(json.dumps(comparison.to_dict()))
    return 0


def _offline(name: str) -> str:
    from edge_vlm.eval.benchmarks import get_benchmark

    return get_benchmark(name).offline
