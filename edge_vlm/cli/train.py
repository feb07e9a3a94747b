"""`edge-vlm train`: run a training preset (one stage, or a plan of stages), resume it, or merge a LoRA adapter.

    edge-vlm train --config train/configs/finetune.yaml --init_from CKPT --data_path DATA.json [--key value ...]
    torchrun --nproc_per_node 8 -m edge_vlm.cli.main train --config ...      (DDP; see train/README.md)
    edge-vlm train --config ... --resume                                     (continue a killed run)
    edge-vlm train --merge runs/lora                                         (adapter -> plain checkpoint)
"""

from __future__ import annotations

import argparse
import dataclasses

HELP = "train LLaVA-Phi: SFT, stage 1 (pretrain), stage 2 (finetune), LoRA/QLoRA; resumable, multi-process"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edge_vlm.train.config import TrainConfig  # torch-free

    parser.add_argument("--config", help="a preset YAML (train/configs/*.yaml)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue from the latest checkpoint in output_dir (or from CHECKPOINT); finished "
                             "stages of a plan are skipped")
    parser.add_argument("--overwrite", action="store_true", help="start over in an output_dir that holds a run")
    parser.add_argument("--merge", metavar="RUN_DIR",
                        help="merge RUN_DIR/adapter into its base (from RUN_DIR/config.yaml) -> RUN_DIR/final")
    parser.add_argument("--eval-limit", type=int, default=None, metavar="N",
                        help="a plan's evaluate step: score only the first N held-out questions")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a key of one stage of a plan (repeatable)")
    keys = parser.add_argument_group("config keys (override the preset; values are YAML: 1e-4, true, [a,b])")
    for item in dataclasses.fields(TrainConfig):
        keys.add_argument(f"--{item.name}", default=argparse.SUPPRESS, metavar="V")


def _overrides(args: argparse.Namespace) -> list[str]:
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.train.config import TrainConfig

    out: list[str] = []
    for item in dataclasses.fields(TrainConfig):
        if hasattr(args, item.name):
            out += [f"--{item.name}", str(getattr(args, item.name))]
    for entry in args.set:
        if "=" not in entry or "." not in entry.split("=", 1)[0]:
            raise EdgeVLMError(f"--set {entry!r}: expected STAGE.KEY=VALUE, e.g. --set finetune.lr=1e-5")
        key, value = entry.split("=", 1)
        out += [f"--{key}", value]
    return out


def run(args: argparse.Namespace) -> int:
    import os
    import time
    from pathlib import Path

    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.train.config import load_plan, plan_steps

    if args.merge:
        return _merge(Path(args.merge))
    if not args.config:
        raise EdgeVLMError("give --config train/configs/<preset>.yaml (or --merge RUN_DIR)")
    plan = load_plan(args.config, _overrides(args))
    steps = plan_steps(args.config)
    if args.eval_limit is not None and args.eval_limit < 1:
        raise EdgeVLMError(f"--eval-limit must be >= 1, got {args.eval_limit}")
    _check_resume(plan, args.resume)
    _check_plan(plan, steps, args.config)
    from edge_vlm.train.loop import FINAL_DIR, train

    main_process = os.environ.get("RANK", "0") == "0"
    started_plan = time.perf_counter()
    if "synth" in steps:
        from accelerate import PartialState

        from edge_vlm.train.builtin import ensure_world

        with PartialState(cpu=not _cuda()).main_process_first():  # the others find it written
            ensure_world(**steps["synth"])
    if "vision_pretrain" in steps:
        plan[0] = _with_pretrained_vision(plan[0], steps["vision_pretrain"], args.config)
    for config in plan:
        label = config.name or config.stage
        final = Path(config.output_dir) / FINAL_DIR
        if args.resume and len(plan) > 1 and final.is_dir():
            print(f"[{label}] done earlier: {final}")
            continue
        started = time.perf_counter()
        result = train(config, resume=args.resume, overwrite=args.overwrite)
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        if main_process:  # one summary line per run, not per process
            print(f"[{label}] {result.steps} steps in {time.perf_counter() - started:.0f} s, last loss {last} -> "
                  f"{result.final_dir}")
    if main_process:
        print(f"trained in {time.perf_counter() - started_plan:.0f} s (wall clock, data generation included)")
    if "evaluate" in steps and main_process:
        options = dict(steps["evaluate"])
        if args.eval_limit is not None:
            options["limit"] = args.eval_limit
        _evaluate(Path(plan[-1].output_dir), options)
    return 0


def _check_plan(plan, steps: dict, source: str) -> None:
    """Everything that can be checked before the first slow step: the plan steps' options, every input file and
    folder the stages name (except those an earlier step writes), and that every output folder can be written."""
    from pathlib import Path

    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.fileio import check_output_folder

    made: list[Path] = []  # written by the plan itself before they are read
    if "synth" in steps:
        from edge_vlm.train.builtin import check_world_options

        check_world_options(steps["synth"], source)
        made.append(Path(steps["synth"]["out"]))
    if "vision_pretrain" in steps:
        from edge_vlm.train.vision_pretrain import VisionPretrainConfig

        made.append(Path(VisionPretrainConfig.from_dict(dict(steps["vision_pretrain"]), source).output_dir))
    made += [Path(config.output_dir) for config in plan]

    def check(path, what: str, kind: str = "file") -> None:
        path = Path(path)
        if any(path == m or m in path.parents for m in made):
            return
        exists = path.is_file() if kind == "file" else path.is_dir()
        if not exists:
            found = "not found" if not path.exists() else f"not a {'file' if kind == 'file' else 'folder'}"
            raise EdgeVLMError(f"{source}: {what} {path}: {found}")

    for config in plan:
        where = f"[{config.name}] " if config.name else ""
        check(config.data_path, f"{where}data_path")
        for corpus in config.tokenizer_corpus or []:
            check(corpus, f"{where}tokenizer_corpus")
        if config.image_root:
            check(config.image_root, f"{where}image_root", "folder")
        if config.init_from:
            check(config.init_from, f"{where}init_from (a checkpoint folder)", "folder")
        if config.tokenizer:
            check(config.tokenizer, f"{where}tokenizer (a folder with tokenizer.json)", "folder")
    if "evaluate" in steps:
        check(steps["evaluate"]["eval_file"], "evaluate eval_file")
    for config in plan:
        check_output_folder(config.output_dir, "training run")


def _check_resume(plan, resume) -> None:
    """`--resume` (without a checkpoint path) where no stage of the run has a checkpoint or a final/ folder: there is
    nothing to continue, and starting over silently would hide a wrong output_dir. A single run that finished
    (final/ and no checkpoint to go back to) has nothing to resume either."""
    from pathlib import Path

    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.train.state import latest_checkpoint

    if resume is not True:
        return
    runs = [Path(config.output_dir) for config in plan]
    where = runs[0] if len(runs) == 1 else runs[0].parent
    checkpoints = [latest_checkpoint(run) is not None for run in runs]
    finished = [(run / "final").is_dir() for run in runs]
    if not any(checkpoints) and not any(finished):
        raise EdgeVLMError(f"--resume: nothing to resume in {where} (no training checkpoint or finished stage there): "
                           "check output_dir, or start without --resume")
    if len(runs) == 1 and finished[0] and not checkpoints[0]:
        raise EdgeVLMError(f"--resume: nothing to resume in {where}: its run finished (final/ is there, no "
                           "checkpoint to continue from); pass --overwrite to train it again")


def _with_pretrained_vision(first, options: dict, source: str):
    """Run the plan's vision_pretrain step (main process first; the others find it done) and return the first
    stage's config starting from its checkpoint instead of from the bare preset."""
    import dataclasses

    from accelerate import PartialState

    from edge_vlm.train.vision_pretrain import run_vision_pretrain

    if first.init_from is not None:
        from edge_vlm.errors import EdgeVLMError

        raise EdgeVLMError(f"{source}: vision_pretrain builds the starting model from model_preset; the first stage "
                           f"must not set init_from ({first.init_from})")
    with PartialState(cpu=not _cuda()).main_process_first():
        final = run_vision_pretrain(options, first, source)
    return dataclasses.replace(first, init_from=str(final), model_preset=None, tokenizer=None,
                               tokenizer_vocab_size=None, tokenizer_corpus=None)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _evaluate(run_dir, options: dict) -> None:
    import json
    import sys

    from edge_vlm.fileio import atomic_write
    from edge_vlm.train.builtin import evaluate_exact_match, format_accuracy

    result = evaluate_exact_match(run_dir / "final", options["eval_file"], limit=options.get("limit"),
                                  progress=sys.stderr.isatty())
    print(format_accuracy(result))
    out = run_dir / "eval_results.json"
    atomic_write(out, json.dumps({"checkpoint": str(run_dir / "final"), "eval_file": str(options["eval_file"]),
                                  **result}, indent=2) + "\n", "evaluation results")
    print(f"exact match written to {out}")


def _merge(run_dir) -> int:
    from edge_vlm.configfile import read_yaml_mapping
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.train.lora import ADAPTER_DIR, merge_adapter

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise EdgeVLMError(f"no config.yaml in {run_dir}: not a training run directory")
    config = read_yaml_mapping(config_file, "run config")
    if not isinstance(config.get("init_from"), str) or not config["init_from"]:
        raise EdgeVLMError(f"{config_file} has no init_from: nothing to merge the adapter into")
    out = merge_adapter(config["init_from"], run_dir / ADAPTER_DIR, run_dir / "final",
                        quantized_base=bool(config.get("qlora")))
    print(f"merged {run_dir / ADAPTER_DIR} into {config['init_from']} -> {out}")
    return 0
