"""`edge-vlm bench`: per-stage latency, memory and the decode roofline for one or more backends.

    edge-vlm bench --model CKPT --bundle B_INT4 --backend torch-fp32,ort-int4 --json out.json
    edge-vlm bench --preset llava-phi-2 --random-weights --backend torch-fp32
    edge-vlm bench --scenario benchmarks/cpu.yaml --model CKPT --bundle B
    edge-vlm bench compare A.json B.json
    edge-vlm bench render A.json --markdown A.md --plot A.png      (re-draw a recorded report)
The table goes to stdout and the last stdout line is the report as one compact JSON document.
"""

from __future__ import annotations

import argparse

from edge_vlm.cli.args import folder, thread_count

HELP = ("measure latency per stage, memory and the bandwidth roofline of backends; "
        "`bench compare A.json B.json`, `bench render A.json`")

# flag dest -> BenchSettings field (flags left unset fall back to the scenario, then to BenchSettings' defaults)
_SETTING_FLAGS = ("backends", "model", "bundles", "preset", "random_weights", "prompt_tokens", "new_tokens", "runs",
                  "warmup", "threads", "device", "image", "verify", "bandwidth_mib", "image_tokens", "contextual_tokens")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subcommand", nargs="*", metavar="compare A.json B.json | render A.json",
                        help="compare two reports written with --json (prints B/A ratios), or print the table of "
                             "one and write its --markdown / --plot again")
    source = parser.add_argument_group("what to measure")
    source.add_argument("--model", type=folder, help="checkpoint directory (torch backends)")
    source.add_argument("--bundle", dest="bundles", action="append", type=folder,
                        help="bundle directory (onnxruntime backends); repeat for several precisions")
    source.add_argument("--preset", help="build this preset in memory (torch backends), e.g. llava-phi-2")
    source.add_argument("--random-weights", action="store_true", default=None,
                        help="required with --preset: the results are labelled random weights everywhere")
    source.add_argument("--backend", dest="backends", action="append",
                        help="comma-separated: torch-fp32|bf16|fp16|int8|nf4, ort-fp32|fp16|int8|int4 "
                             "(onnxruntime-... too), ort-...+trt for TensorRT vision (default torch-fp32)")
    work = parser.add_argument_group("workload")
    work.add_argument("--prompt-tokens", type=int, help="total image-prompt length, image tokens included (default 600, lowered to fit the "
                           "model's context with --new-tokens; a length given here that does not fit is refused)")
    work.add_argument("--new-tokens", type=int, help="decode steps per query; EOS is ignored (64)")
    work.add_argument("--runs", type=int, help="measured queries per backend; medians are reported (3)")
    work.add_argument("--warmup", type=int, help="unmeasured queries first (1)")
    work.add_argument("--threads", type=thread_count,
                      help="intra-op threads for torch / onnxruntime and the bandwidth test, 1 to 4x the CPU cores")
    work.add_argument("--device", choices=["cpu", "cuda"], help="cpu (default) or cuda")
    work.add_argument("--image", help="an image file (default: a synthetic 640x480 picture)")
    work.add_argument("--verify", choices=["hash", "size", "none"], help="bundle file check at load (size)")
    work.add_argument("--bandwidth-mib", type=int,
                      help="smallest array of the bandwidth test in MiB (256); it also runs at 4x and 16x the "
                           "last-level cache")
    work.add_argument("--image-tokens", type=int, metavar="K",
                      help="torch backends: give the model K of its image tokens (as `export --image-tokens`); a "
                           "bundle's are fixed at export, and one with another K is refused")
    work.add_argument("--contextual-tokens", type=int, metavar="C", help="with --image-tokens: C of them merged")
    work.add_argument("--scenario", help="a YAML scenario (benchmarks/*.yaml); flags given here win")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the full report (schema edge-vlm-bench v1)")
    out.add_argument("--markdown", metavar="FILE", help="write a markdown page")
    out.add_argument("--plot", metavar="FILE", help="write a PNG chart (needs matplotlib: edge-vlm[bench])")
    out.add_argument("--profile", metavar="DIR",
                     help="also run each onnxruntime backend once with ONNX Runtime's profiler (per-operator time)")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    out.add_argument("--print-schema", action="store_true", help="print the report's JSON Schema and exit")


def _settings(args: argparse.Namespace):
    """(BenchSettings, where --prompt-tokens came from: the flag, the scenario, or None for the default)."""
    from edge_vlm.bench.settings import BenchSettings, load_scenario

    values = load_scenario(args.scenario) if args.scenario else {}
    source = f"scenario {args.scenario}: prompt_tokens" if "prompt_tokens" in values else None
    for name in _SETTING_FLAGS:
        given = getattr(args, name)
        if given is not None:
            values[name] = given
    if args.prompt_tokens is not None:
        source = "--prompt-tokens"
    if "backends" not in values:
        values["backends"] = _default_backends(values)
    return BenchSettings(**values), source


def _default_backends(values: dict) -> list[str]:
    """Without --backend: what was given is measured, torch-fp32 for --model / --preset and each --bundle at its own
    precision (torch-fp32 alone when nothing was given, whose error then asks for --model)."""
    from edge_vlm.bench.artifacts import bundle_manifest, bundle_precision

    bundles = values.get("bundles") or []
    backends = ["torch-fp32"] if values.get("model") or values.get("preset") or not bundles else []
    for directory in [bundles] if isinstance(bundles, str) else bundles:
        backends.append(f"ort-{bundle_precision(bundle_manifest(directory))}")
    return backends


def _check_outputs(args: argparse.Namespace, write_json: bool = True) -> None:
    """Refuse an output that cannot be written before anything is measured (a folder that is a file or read-only,
    an output that is a folder, an existing file bench did not write): minutes of measurement must not end in a
    traceback, nor replace a user's file."""
    from pathlib import Path

    from edge_vlm.bench.plot import is_plot
    from edge_vlm.bench.report import is_report_json, is_report_markdown
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.fileio import check_output_file, check_output_parent

    for flag, what, ours in (("json", "report", is_report_json), ("markdown", "markdown page", is_report_markdown),
                             ("plot", "chart", is_plot)):
        path = getattr(args, flag, None)
        if path is None or (flag == "json" and not write_json):
            continue
        if Path(path).is_dir():
            raise EdgeVLMError(f"--{flag} {path} is a folder: give a file name")
        check_output_file(path, what, ours)
        check_output_parent(path, what)
    profile = getattr(args, "profile", None)
    if profile is not None:
        if Path(profile).exists() and not Path(profile).is_dir():
            raise EdgeVLMError(f"--profile {profile} is a file: give a folder for the profiles")
        check_output_parent(Path(profile) / "profile.json", "profile")


def _subcommand(words: list[str], args: argparse.Namespace) -> int:
    from edge_vlm.errors import EdgeVLMError

    if len(words) == 3 and words[0] == "compare":
        return _compare(words[1:])
    if len(words) == 2 and words[0] == "render":
        return _render(words[1], args)
    raise EdgeVLMError(f"unexpected arguments {' '.join(words)!r}: use `edge-vlm bench compare A.json B.json` or "
                       "`edge-vlm bench render A.json [--markdown F] [--plot F]`")


def _outputs(report: dict, args: argparse.Namespace, write_json: bool) -> None:
    import json
    import sys

    from edge_vlm.bench.report import closing_line, render_markdown, render_table
    from edge_vlm.fileio import atomic_write

    print(render_table(report))
    if args.json and write_json:
        atomic_write(args.json, json.dumps(report, indent=1) + "\n", "report")
        print(f"edge-vlm bench: wrote {args.json}", file=sys.stderr)
    if args.markdown:
        atomic_write(args.markdown, render_markdown(report), "markdown page")
        print(f"edge-vlm bench: wrote {args.markdown}", file=sys.stderr)
    if args.plot:
        from edge_vlm.bench.plot import write_plot

        write_plot(report, args.plot)
        print(f"edge-vlm bench: wrote {args.plot}", file=sys.stderr)
    print(closing_line(report))


def _render(path: str, args: argparse.Namespace) -> int:
    from edge_vlm.bench.compare import load_report

    report = load_report(path)
    _check_outputs(args, write_json=False)
    _outputs(report, args, write_json=False)
    return 0


def _compare(paths: list[str]) -> int:
    import json

    from edge_vlm.bench.compare import compare_reports, load_report, render_comparison

    a, b = load_report(paths[0]), load_report(paths[1])
    result = compare_reports(a, b)
    print(render_comparison(result, paths[0], paths[1]))
    print(json.dumps({"compare": {"a": paths[0], "b": paths[1]}, **result}, separators=(",", ":")))
    return 0


def run(args: argparse.Namespace) -> int:
    import json
    import shlex
    import sys

    if args.print_schema:
        from edge_vlm.bench.schema import SCHEMA

        print(json.dumps(SCHEMA, indent=2))
        return 0
    if args.subcommand:
        return _subcommand(args.subcommand, args)

    from edge_vlm.bench.runner import prepare, run_benchmark
    from edge_vlm.bench.schema import validate
    from edge_vlm.cli.main import one_line

    settings, prompt_source = _settings(args)
    _check_outputs(args)  # cheap, so first: `prepare` may spend seconds checking a checkpoint in a child process
    notes: list[str] = []
    settings, bundles = prepare(settings, prompt_source, log=notes.append)
    for note in notes:  # after every refusal: a refused run prints its one error line alone
        print(note, file=sys.stderr, flush=True)
    command = "edge-vlm " + shlex.join(sys.argv[1:])
    report = run_benchmark(settings, command, progress=not args.quiet, profile_dir=args.profile, bundles=bundles)
    validate(report)
    _outputs(report, args, write_json=True)
    failed = [b for b in report["backends"] if b.get("status") != "ok"]
    for backend in failed:  # the table shows them too, but a script reads stderr and the exit code
        print(f"edge-vlm bench: error: {backend['name']}: {one_line(str(backend.get('error')))}", file=sys.stderr)
    return 1 if failed else 0
