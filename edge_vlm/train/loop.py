"""One training loop for every stage, on HF accelerate (single process, DDP under torchrun / accelerate launch,
FSDP or DeepSpeed through accelerate config files in train/).

The loss of an optimizer step is the mean over the supervised tokens of the whole global batch: each micro-batch's
summed token loss is divided by the global token count (all-reduced before the step), so the step's gradient does not
depend on how the global batch is split over processes and accumulation steps (a 2-process run matches a 1-process run)
and long answers weigh as much in a small micro-batch as in a large one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from functools import partial
from pathlib import Path

import torch

from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageConfig
from edge_vlm.tokenizer import IGNORE_INDEX
from edge_vlm.train import state as ckpt
from edge_vlm.train.batching import BatchPlan, build_dataset
from edge_vlm.train.config import TrainConfig
from edge_vlm.train.modelsetup import (
    apply_freezing,
    count_trainable,
    load_start,
    pick_mixed_precision,
    unused_vision_parameters,
)
from edge_vlm.train.optim import build_optimizer, build_scheduler
from edge_vlm.train.records import PLOT_FILE, MetricsLog, plot_loss

FINAL_DIR = "final"
# Test hook: SIGKILL this process right after optimizer step N (a real crash, for the resume test).
KILL_ENV = "EDGE_VLM_TRAIN_KILL_AT_STEP"
# Keys that may change between a run and its resume (the rest define the run's maths and must match).
_RESUMABLE_CHANGES = {"per_device_batch_size", "num_workers", "save_every_steps", "keep_checkpoints", "log_every_steps",
                      "tensorboard", "plot", "progress", "max_steps", "mixed_precision", "gradient_checkpointing",
                      "ddp_find_unused_parameters", "output_dir", "num_threads", "lora_merge", "num_epochs"}


@dataclasses.dataclass
class RunResult:
    final_dir: Path | None
    steps: int
    losses: list[float]


def _fingerprint(config: TrainConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE_CHANGES}


def _check_resumable(config: TrainConfig, saved: dict, where: Path) -> None:
    now = _fingerprint(config)
    changed = sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        raise EdgeVLMError(f"cannot resume from {where}: the config changed ({detail}); restore it or start a new "
                           "output_dir")


def _supervised_tokens(labels: torch.Tensor) -> int:
    # Causal LM loss: position t predicts label t+1, so the first label of each row is never a target.
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def train(config: TrainConfig, dataset=None, resume: bool | str | None = False, overwrite: bool = False) -> RunResult:
    """Run one stage. `dataset` replaces the config's data (tests); `resume`: True = the latest checkpoint in
    output_dir (a fresh start if none), a path = that checkpoint."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
    from tqdm.auto import tqdm

    from edge_vlm.data.dataset import collate
    from edge_vlm.fileio import check_output_folder

    # The user's mistakes that would otherwise surface only after the model is loaded: fail before the slow work.
    if dataset is None and not Path(config.data_path).is_file():
        raise EdgeVLMError(f"training data not found: {config.data_path} (data_path)")
    check_output_folder(config.output_dir, "training run")
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    # Without a GPU, accelerate sets up gloo for torchrun / accelerate launch only when told it runs on CPU.
    on_cpu = not torch.cuda.is_available()
    world = PartialState(cpu=on_cpu).num_processes
    grad_accum = config.grad_accum_steps(world)
    find_unused = config.ddp_find_unused_parameters
    if find_unused is None:  # text-only micro-batches leave the projector (and vision tower) without gradients
        find_unused = config.stage != "sft"
    accelerator = Accelerator(
        cpu=on_cpu,
        gradient_accumulation_steps=grad_accum,
        mixed_precision=pick_mixed_precision(config.mixed_precision),
        step_scheduler_with_optimizer=False,  # stepped once per optimizer step, below
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
    )
    main, rank = accelerator.is_main_process, accelerator.process_index
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    say = print if main else (lambda *a, **k: None)
    out = Path(config.output_dir)
    resume_dir = _resume_dir(out, resume, overwrite)
    if overwrite and resume_dir is None and main:
        import shutil

        for stale in (out / ckpt.CHECKPOINTS, out / FINAL_DIR):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    set_seed(config.seed)

    # ---------------------------------------------------------------- model
    quantization, device_map = None, None
    if config.qlora:
        from edge_vlm.train.lora import qlora_quantization_config

        quantization = qlora_quantization_config(config.init_from, note=main)
        device_map = {"": accelerator.local_process_index} if torch.cuda.is_available() else {"": "cpu"}
    model, tokenizer, meta = load_start(config, quantization, device_map, log=say)
    num_image_tokens, image_size = model.num_image_tokens, model.config.vision_config.image_size
    context = config.model_max_length or model.config.text_config.max_position_embeddings
    model.train()
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (stage 1). transformers 5 renamed the method.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    parts = config.trainable_parts
    if config.use_lora:
        from edge_vlm.train.lora import wrap_lora

        model = wrap_lora(model, config, parts)
        unused = unused_vision_parameters(model)
        for name, param in model.named_parameters():
            if name in unused:
                param.requires_grad_(False)
    else:
        apply_freezing(model, parts)
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    n_train, n_total = count_trainable(model)
    lora_note = f" with LoRA r={config.lora_r}" if config.use_lora else ""
    say(f"stage {config.stage}: training {'+'.join(parts)}{lora_note}"
        f" = {n_train:,} of {n_total:,} parameters; {world} process(es) x {config.per_device_batch_size} per device x "
        f"{grad_accum} accumulation = global batch {config.global_batch_size}")

    # ---------------------------------------------------------------- data, optimizer, schedule
    if dataset is None:
        dataset = build_dataset(config, tokenizer, num_image_tokens, image_size, context, quiet=not main)
    lengths = [dataset.length_estimate(i) for i in range(len(dataset))] if config.group_by_length else None
    plan = BatchPlan(len(dataset), config.global_batch_size, config.per_device_batch_size, world, config.seed,
                     config.drop_last, lengths)
    total_steps = config.max_steps or plan.steps_per_epoch * config.num_epochs
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # We feed our own micro-batches (no prepared DataLoader), so DeepSpeed's "auto" values are filled from the config.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = config.per_device_batch_size
        if ds_config.get("gradient_clipping") == "auto":
            ds_config["gradient_clipping"] = config.max_grad_norm
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    global_step, epoch, step_in_epoch, order, losses = 0, 0, 0, None, []
    # Supervised tokens trained on so far (every process sees the global count); None: unknown (a checkpoint of an
    # older version). Zero at the end of an epoch or of the run means every sample was skipped: see _check_learned.
    trained_tokens: int | None = 0
    step_rng = ckpt.rng_state()
    if resume_dir is not None:
        global_step, epoch, step_in_epoch, order, losses, trained_tokens = _restore(
            accelerator, resume_dir, config, model, optimizer, scheduler, trainable_names, sharded, len(dataset))
        say(f"resumed from {resume_dir} at step {global_step} (epoch {epoch}, step {step_in_epoch} of the epoch)")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(_yaml(config))
    log = MetricsLog(out, global_step if resume_dir else None, config.tensorboard) if main else None
    pad_id = tokenizer.eos_token_id
    bar = tqdm(total=total_steps, initial=global_step, disable=not (main and config.progress), desc=config.name or
               config.stage, dynamic_ncols=True)
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)

    def save(position: tuple[int, int, torch.Tensor]) -> None:
        _check_weights(accelerator, model, trainable_names, global_step, out, config)
        next_epoch, next_step, next_order = position
        trainer_state = {"global_step": global_step, "epoch": next_epoch, "step_in_epoch": next_step,
                         "total_steps": total_steps, "losses": losses, "config": _fingerprint(config),
                         "world_size": world, "trained_tokens": trained_tokens}
        _save(accelerator, out, global_step, model, optimizer, scheduler, trainer_state, next_order, step_rng,
              trainable_names, sharded)
        if main:
            ckpt.prune_checkpoints(out, config.keep_checkpoints)

    # The data position of the next step to run: (epoch, step in that epoch, that epoch's sample order).
    position = (epoch, step_in_epoch, order if order is not None else plan.epoch_order(epoch))
    try:
        while global_step < total_steps:
            epoch, step_in_epoch, order = position
            steps = range(step_in_epoch, plan.steps_per_epoch)
            micro = [mb for s in steps for mb in plan.micro_batches(order, s, rank)]
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=[mb.indices for mb in micro],
                                                 collate_fn=partial(collate, pad_id=pad_id),
                                                 num_workers=config.num_workers)
            batches = iter(loader)
            for step in steps:
                step_rng = ckpt.rng_state()  # what a resume from this step boundary restores
                started = time.perf_counter()
                group = [next(batches) for _ in range(grad_accum)]
                try:
                    loss, tokens, grad_norm = _optimizer_step(
                        accelerator, model, optimizer, scheduler, group, micro[(step - step_in_epoch) * grad_accum:],
                        grad_accum, world, config.max_grad_norm)
                except _Diverged as diverged:
                    if main:  # recorded (as null: strict JSON) so that the metrics show where the run ended
                        log.log({"step": global_step + 1, "epoch": epoch, "event": "diverged", "loss": diverged.loss,
                                 "grad_norm": diverged.grad_norm})
                    raise EdgeVLMError(_divergence_message(global_step + 1, diverged.what, out, config)) from None
                global_step += 1
                losses.append(loss)
                if trained_tokens is not None:
                    trained_tokens += tokens
                elapsed = time.perf_counter() - started
                samples = len(plan.global_batch_indices(order, step))
                lr = scheduler.get_last_lr()[0]
                if main and (global_step % config.log_every_steps == 0 or global_step == total_steps):
                    log.log({"step": global_step, "epoch": epoch, "loss": loss, "lr": lr,
                             "grad_norm": grad_norm, "tokens": tokens, "samples": samples,
                             "samples_per_s": samples / max(elapsed, 1e-9), "time_s": elapsed})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples / max(elapsed, 1e-9):.1f}")
                bar.update(1)
                if step + 1 < plan.steps_per_epoch:
                    position = (epoch, step + 1, order)
                else:  # a whole epoch saw every sample: if none could be used, later epochs cannot use one either
                    _check_learned(trained_tokens, global_step, out, config)
                    position = (epoch + 1, 0, plan.epoch_order(epoch + 1))
                step_rng = ckpt.rng_state()
                if config.save_every_steps and global_step % config.save_every_steps == 0 and global_step < total_steps:
                    save(position)
                if kill_at and global_step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                if global_step >= total_steps:
                    break
    except KeyboardInterrupt:
        if world == 1 and not sharded and global_step > 0:
            # Interrupted mid-step: parameters and optimizer are still those of the last finished step, and
            # step_rng is the RNG at that boundary, so this checkpoint resumes exactly there.
            say(f"\ninterrupted: saving step {global_step} to {ckpt.checkpoint_dir(out, global_step)}")
            save(position)
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()

    _check_learned(trained_tokens, global_step, out, config)
    _check_weights(accelerator, model, trainable_names, global_step, out, config)
    final = _save_final(accelerator, config, model, tokenizer, meta, image_size, out, sharded)
    if main and config.plot:
        plot_loss(out / "metrics.jsonl", out / PLOT_FILE, title=f"{config.name or config.stage}: loss per step")
    accelerator.wait_for_everyone()
    return RunResult(final, global_step, losses)


def _optimizer_step(accelerator, model, optimizer, scheduler, group: list[dict], micro: list, grad_accum: int,
                    world: int, max_grad_norm: float) -> tuple[float, int, float | None]:
    """Forward/backward over this process's micro-batches of one global batch, then one optimizer and scheduler step.
    Returns (global-batch loss per supervised token, supervised tokens, gradient norm before clipping)."""
    for batch, mb in zip(group, micro):
        if mb.dummy:
            batch["labels"].fill_(IGNORE_INDEX)
    local_tokens = sum(_supervised_tokens(b["labels"]) for b in group)
    tokens = accelerator.reduce(torch.tensor(float(local_tokens), device=accelerator.device), "sum")
    per_process = tokens.clamp(min=1) / world  # DDP averages gradients over processes
    local_sum = torch.zeros((), device=accelerator.device)
    loss, grad_norm = None, None
    device = accelerator.device
    for batch in group:
        with accelerator.accumulate(model):
            outputs = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                pixel_values=None if batch["pixel_values"] is None else batch["pixel_values"].to(device),
                labels=batch["labels"].to(device),
                num_items_in_batch=per_process,  # transformers' loss: token sum / this
                use_cache=False,
            )
            # backward() divides by grad_accum (accelerate's convention); our loss is already this micro-batch's
            # share of the global-batch mean, so scale it back.
            accelerator.backward(outputs.loss * grad_accum)
            local_sum += outputs.loss.detach().float() * per_process
            if accelerator.sync_gradients:
                loss = _global_loss(accelerator, local_sum, tokens)
                if max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                       max_grad_norm)
                    grad_norm = None if norm is None else float(norm)
                # Checked before the update, so the weights stay those of the last good step. Every process sees the
                # same global loss and norm, so all of them stop together. Under fp16 an infinite norm is the loss
                # scaler's overflow, which skips the step by itself.
                what = _nonfinite(loss, None if accelerator.scaler is not None else grad_norm)
                if what:
                    optimizer.zero_grad(set_to_none=True)
                    raise _Diverged(what, loss, grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if not getattr(optimizer, "step_was_skipped", False):  # fp16 overflow: no update, so no schedule step either
        scheduler.step()
    if loss is None:
        loss = _global_loss(accelerator, local_sum, tokens)
    return loss, int(tokens), grad_norm


def _global_loss(accelerator, local_sum: torch.Tensor, tokens: torch.Tensor) -> float:
    return float(accelerator.reduce(local_sum, "sum") / tokens.clamp(min=1))


class _Diverged(Exception):
    """A step whose loss or gradient norm is NaN or infinite (raised before the optimizer applies it)."""

    def __init__(self, what: str, loss: float, grad_norm: float | None):
        super().__init__(what)
        self.what, self.loss, self.grad_norm = what, loss, grad_norm


def _nonfinite(loss: float, grad_norm: float | None) -> str:
    """'' when both are finite, else what is not (for the error message)."""
    bad = [f"{name} {value}" for name, value in (("loss", loss), ("gradient norm", grad_norm))
           if value is not None and not math.isfinite(value)]
    return ", ".join(bad)


def _divergence_message(step: int, what: str, out: Path, config: TrainConfig) -> str:
    last = ckpt.latest_checkpoint(out)
    kept = (f"the last good checkpoint is kept: {last}" if last is not None else
            "no checkpoint was saved before it" + ("" if config.save_every_steps else " (save_every_steps is 0)"))
    return (f"training diverged at step {step} ({what}): stopped without saving that step or a final/ checkpoint; "
            f"{kept}. Lower lr ({config.lr:g}) or add warmup, and start again in a new output_dir")


def _check_learned(trained_tokens: int | None, global_step: int, out: Path, config: TrainConfig) -> None:
    """Skipping bad samples (on_bad_sample: skip) must not hide that nothing was learned: when the run's steps held
    not one supervised token (every picture unreadable, say), there is no final/ checkpoint and the run fails."""
    if trained_tokens == 0 and global_step > 0:
        raise EdgeVLMError(
            f"nothing was learned: every sample the run's {global_step} step(s) drew from {config.data_path} was "
            f"skipped (see the 'skipped sample' lines above), so no final/ checkpoint was written in {out}; "
            "`edge-vlm data validate` names every unreadable picture")


def _check_weights(accelerator, model, names: list[str], global_step: int, out: Path, config: TrainConfig) -> None:
    """Refuse to save weights holding NaN / inf (a step whose loss was finite can still leave them so)."""
    params = dict(accelerator.unwrap_model(model).named_parameters())
    bad = next((name for name in names if not bool(torch.isfinite(params[name].detach()).all())), None)
    # sharded engines hold a slice per process: every process must agree before any of them stops
    flag = accelerator.reduce(torch.tensor(float(bad is not None), device=accelerator.device), "sum")
    if float(flag) > 0:
        raise EdgeVLMError(_divergence_message(global_step, f"parameter {bad or 'on another process'} is not finite",
                                               out, config))


def _resume_dir(out: Path, resume: bool | str | None, overwrite: bool) -> Path | None:
    if resume and resume is not True:
        path = Path(resume)
        if not (path / ckpt.STATE_FILE).is_file():
            raise EdgeVLMError(f"--resume {path}: not a training checkpoint (no {ckpt.STATE_FILE})")
        return path
    if resume:
        latest = ckpt.latest_checkpoint(out)
        if latest is None:
            print(f"--resume: no checkpoint in {out / ckpt.CHECKPOINTS}; starting from the beginning")
        return latest
    if not overwrite and (ckpt.latest_checkpoint(out) is not None or (out / FINAL_DIR).exists()):
        raise EdgeVLMError(f"{out} already holds a run: pass --resume to continue it, --overwrite to start over, "
                           "or choose another --output_dir")
    return None


def _trainable_state(accelerator, model, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(accelerator.unwrap_model(model).named_parameters())
    return {name: params[name].detach() for name in names}


def _save(accelerator, out: Path, global_step: int, model, optimizer, scheduler, trainer_state: dict,
          order: torch.Tensor, step_rng: dict, names: list[str], sharded: bool) -> None:
    from accelerate.utils import gather_object

    # Every process's RNG goes to the main process, which writes the whole checkpoint in one atomic rename.
    rng_all = gather_object([step_rng]) if accelerator.num_processes > 1 else [step_rng]
    target = ckpt.checkpoint_dir(out, global_step)
    if sharded:  # FSDP / DeepSpeed: the engine's own sharded format (see the module docstring of state.py)
        accelerator.save_state(str(target / "engine"))
    if accelerator.is_main_process:
        trainable = {} if sharded else _trainable_state(accelerator, model, names)
        ckpt.save_training_state(target, trainable=trainable, optimizer={} if sharded else optimizer.state_dict(),
                                 scheduler=scheduler.state_dict(), rng_per_process=rng_all, sample_order=order,
                                 trainer_state=trainer_state)
    accelerator.wait_for_everyone()


def _restore(accelerator, directory: Path, config: TrainConfig, model, optimizer, scheduler, names: list[str],
             sharded: bool, num_samples: int):
    saved = ckpt.load_training_state(directory)
    info = saved["trainer_state"]
    _check_resumable(config, info.get("config", {}), directory)
    # The saved sample order is a permutation of the data's samples as they were: with more or fewer usable samples
    # now, the same positions would be other samples (a bad picture that is skipped still counts: it stays in place).
    if len(saved["sample_order"]) != num_samples:
        raise EdgeVLMError(f"cannot resume from {directory}: the training data changed ({len(saved['sample_order'])} "
                           f"usable samples then, {num_samples} now); restore it or start a new output_dir")
    if sharded:
        accelerator.load_state(str(directory / "engine"))
    else:
        trainable = saved["trainable"]
        if set(trainable) != set(names):
            raise EdgeVLMError(f"{directory}: its trainable parameters do not match this run's "
                               f"({len(trainable)} saved vs {len(names)} now)")
        params = dict(accelerator.unwrap_model(model).named_parameters())
        with torch.no_grad():
            for name in names:
                params[name].copy_(trainable[name].to(params[name].device, params[name].dtype))
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    rng = saved["rng_per_process"]
    ckpt.set_rng_state(rng[accelerator.process_index % len(rng)])
    tokens = info.get("trained_tokens")
    return (int(info["global_step"]), int(info["epoch"]), int(info["step_in_epoch"]), saved["sample_order"],
            list(info.get("losses", [])), int(tokens) if isinstance(tokens, (int, float)) else None)


def _save_final(accelerator, config: TrainConfig, model, tokenizer, meta, image_size: int, out: Path,
                sharded: bool) -> Path | None:
    from edge_vlm.fileio import atomic_dir
    from edge_vlm.model.checkpoint import save_checkpoint

    meta.template = config.template
    meta.image = ImageConfig(image_size=image_size, aspect=config.aspect)
    meta.random_weights = False
    meta.source = (meta.source + "; " if meta.source else "") + f"edge-vlm train stage {config.stage}"
    final = out / FINAL_DIR
    accelerator.wait_for_everyone()
    if config.use_lora:
        from edge_vlm.train.lora import ADAPTER_DIR, merge_adapter

        if accelerator.is_main_process:
            # the adapter folder inside the run folder is the run's own: replacing it is safe
            with atomic_dir(out / ADAPTER_DIR, force=True, replaceable=lambda _: True) as tmp:
                accelerator.unwrap_model(model).save_pretrained(str(tmp), safe_serialization=True)
            if config.lora_merge:
                merge_adapter(config.init_from, out / ADAPTER_DIR, final, quantized_base=config.qlora, meta=meta)
        accelerator.wait_for_everyone()
        return final if config.lora_merge else out / ADAPTER_DIR
    if sharded:
        state_dict = accelerator.get_state_dict(model)  # gathered on the main process
        if accelerator.is_main_process:
            from edge_vlm.model.modeling import LlavaPhiForConditionalGeneration

            plain = LlavaPhiForConditionalGeneration(accelerator.unwrap_model(model).config)
            plain.load_state_dict(state_dict)
            save_checkpoint(plain, tokenizer, final, meta)
    elif accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if config.gradient_checkpointing:
            disable = getattr(unwrapped, "activation_checkpointing_disable", None)
            (disable or unwrapped.gradient_checkpointing_disable)()
        save_checkpoint(unwrapped, tokenizer, final, meta)
    accelerator.wait_for_everyone()
    return final


def _yaml(config: TrainConfig) -> str:
    import yaml

    return "# the resolved config of this run (edge-vlm train)\n" + yaml.safe_dump(config.to_dict(), sort_keys=False)
