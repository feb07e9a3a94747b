"""Training-state checkpoints without pickle: tensors in safetensors, everything else in JSON.

Why not accelerate's save_state: it writes the optimizer, scheduler, sampler and RNG states with torch.save (pickle),
and its load_state swallows a failed RNG restore silently (a resumed run would then drift without a word). Here every
state dict is split into its tensors (safetensors) and a JSON skeleton that says where each tensor goes, so loading
never unpickles anything and a missing piece is an error.

A checkpoint directory (written atomically with edge_vlm.fileio.atomic_dir):
    trainable.safetensors   the trainable parameters (the frozen ones come from the run's starting model)
    optimizer.safetensors + optimizer.json
    scheduler.json
    rng.safetensors + rng.json  one entry per process (torch CPU / CUDA generators, Python's and numpy's)
    data.safetensors        the epoch's sample order
    trainer_state.json      step, epoch, step in epoch, losses so far, and a config fingerprint
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from edge_vlm.errors import EdgeVLMError
from edge_vlm.fileio import atomic_dir

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


# ---------------------------------------------------------------------- state dict <-> (tensors, JSON)
def split_state(obj, tensors: dict[str, torch.Tensor], path: str = "s"):
    """Replace every tensor of a nested state (dicts, lists, tuples, numpy arrays, scalars) by a reference; the
    tensors go into `tensors`. Returns the JSON-able skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [split_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_state(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, split_state(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise EdgeVLMError(f"internal: cannot store a {type(obj).__name__} in a training checkpoint ({path})")


def join_state(skeleton, tensors: dict[str, torch.Tensor]):
    """The inverse of split_state."""
    if isinstance(skeleton, list):
        return [join_state(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            key = skeleton["__tensor__"]
            if key not in tensors:
                raise EdgeVLMError(f"training checkpoint is missing tensor {key}")
            return tensors[key]
        if "__ndarray__" in skeleton:
            return np.asarray(skeleton["__ndarray__"], dtype=skeleton["dtype"])
        if "__tuple__" in skeleton:
            return tuple(join_state(v, tensors) for v in skeleton["__tuple__"])
        if "__items__" in skeleton:
            return {k: join_state(v, tensors) for k, v in skeleton["__items__"]}
        return {k: join_state(v, tensors) for k, v in skeleton.items()}
    return skeleton


def save_state_pair(directory: Path, name: str, state) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_state(state, tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(skeleton))


def load_state_pair(directory: Path, name: str):
    try:
        tensors = load_file(str(directory / f"{name}.safetensors"))
        skeleton = json.loads((directory / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError, Exception) as exc:  # safetensors raises its own error type
        raise EdgeVLMError(f"cannot read {name} state in {directory}: {exc}") from exc
    return join_state(skeleton, tensors)


# ---------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """This process's random generators (torch CPU and CUDA, Python, numpy)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- checkpoint dirs
def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:07d}"


def _ours(_: Path) -> bool:
    """A step folder under the run's checkpoints/ is the run's own: rewriting it (a resumed run) is safe."""
    return True


def save_training_state(target: Path, *, trainable: dict[str, torch.Tensor], optimizer: dict, scheduler: dict,
                        rng_per_process: list[dict], sample_order: torch.Tensor, trainer_state: dict) -> Path:
    """Write one training-state checkpoint atomically (called on the main process only)."""
    with atomic_dir(target, force=True, replaceable=_ours) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        save_state_pair(tmp, "optimizer", optimizer)
        (tmp / "scheduler.json").write_text(json.dumps(scheduler))
        save_state_pair(tmp, "rng", rng_per_process)
        save_file({"sample_order": sample_order.to(torch.int64).contiguous()}, str(tmp / "data.safetensors"))
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
    return target


def load_training_state(directory: Path) -> dict:
    """Everything save_training_state wrote, as a dict with the same keys."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        raise EdgeVLMError(f"{directory} is not a training checkpoint (no {STATE_FILE})")
    try:
        scheduler = json.loads((directory / "scheduler.json").read_text())
        trainer_state = json.loads((directory / STATE_FILE).read_text())
        trainable = load_file(str(directory / "trainable.safetensors"))
        order = load_file(str(directory / "data.safetensors"))["sample_order"]
    except Exception as exc:  # OSError, JSONDecodeError, safetensors' own error
        raise EdgeVLMError(f"cannot read training checkpoint {directory}: {exc}") from exc
    return {
        "trainable": trainable,
        "optimizer": load_state_pair(directory, "optimizer"),
        "scheduler": scheduler,
        "rng_per_process": load_state_pair(directory, "rng"),
        "sample_order": order,
        "trainer_state": trainer_state,
    }


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete training checkpoints of a run, oldest first (atomic writes: a listed one is whole)."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` training checkpoints (keep 0 = keep all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
