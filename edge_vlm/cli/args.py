"""Checks for the flags several verbs share (--threads, --seed, --device, --providers, folder paths, --image, rates and
times such as --max-hz, --fps, --duration).

The argparse `type=` functions below refuse a bad value while the command line is parsed, so it costs one line and
exit status 2 (see main.OneLineParser) before any model loads. They import nothing heavy: `--help` stays instant.
"""

from __future__ import annotations

import argparse
import math
import os

# More threads than cores only slow a model down (they contend for the same cores); a typo like 100000 must not make
# ONNX Runtime or torch try to start that many threads and hang the machine. 4x the cores leaves room for
# oversubscription experiments.
THREADS_PER_CORE = 4


def max_threads() -> int:
    return (os.cpu_count() or 1) * THREADS_PER_CORE


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def thread_count(text: str) -> int:
    """--threads N: 1 .. max_threads()."""
    value = _integer(text)
    if not 1 <= value <= max_threads():
        raise argparse.ArgumentTypeError(
            f"{value} threads: give 1 to {max_threads()} ({os.cpu_count()} cores here; more threads than cores only "
            "slow a model down)")
    return value


def count(least: int, most: int):
    """argparse type: a whole number from `least` to `most` (data synth's sample counts, data validate's token
    lengths), refused while the command line is parsed."""
    def parse(text: str) -> int:
        value = _integer(text)
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"{value}: give {least} to {most:,}")
        return value

    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):  # float() reads 'nan', 'inf' and '1e999' without complaint
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_number(text: str) -> float:
    """A finite number > 0 (--max-hz, --duration, --speed, --max-age-ms, --request-timeout): NaN would disable
    every comparison it takes part in, 0 or a negative would stop or stall the run, and infinity is never meant."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_number(text: str) -> float:
    """A finite number >= 0 (--image-cache-mb: 0 turns the cache off)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def frame_rate(text: str) -> float:
    """--fps: a finite number in (0, edge_vlm.stream.source.MAX_FPS]."""
    from edge_vlm.stream.source import MAX_FPS

    value = _finite(text)
    if not 0 < value <= MAX_FPS:
        raise argparse.ArgumentTypeError(f"must be a frame rate > 0 and <= {MAX_FPS:g}, got {text}")
    return value


def nonempty_name(text: str) -> str:
    """A non-empty name (serve --model-name): an empty one would be an id no client can ask for."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a name, got an empty string")
    return text


def seed(text: str) -> int:
    """--seed N: what GenerationConfig accepts (0 .. 2**32-1), checked while parsing."""
    from edge_vlm.engine import GenerationConfig
    from edge_vlm.errors import EdgeVLMError

    value = _integer(text)
    try:
        GenerationConfig(seed=value)
    except EdgeVLMError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def folder(text: str) -> str:
    """A folder path flag (--model, --bundle): an empty string would silently mean the current folder or the
    default model."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a folder path, got an empty string")
    return text


def file_path(text: str) -> str:
    """A file path flag (--image): an empty string would silently mean no file at all."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a file path, got an empty string")
    return text


def providers(text: str) -> list[str]:
    """--providers a,b: canonical ONNX Runtime provider names; empty or unknown names are refused, naming the
    choices. Whether they are installed is checked when the bundle opens."""
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.runtime.providers import normalize

    try:
        return normalize(text)
    except EdgeVLMError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Once(argparse.Action):
    """A flag that may be given once: argparse would silently keep the last of two --image values."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} was given twice ({getattr(namespace, self.dest)!r} and {values!r}): "
                         "give it once")
        setattr(namespace, self.dest, values)


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """A torch device string that torch knows and this machine has; None stays None (the default device).
    Imports torch, so call it only for a --model run, before the model loads."""
    from edge_vlm.errors import EdgeVLMError

    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise EdgeVLMError(f"{flag} {device!r} is not a torch device: give e.g. cpu, cuda, cuda:0 or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise EdgeVLMError(f"{flag} {device} was given but torch sees no CUDA GPU")
        if parsed.index is not None and parsed.index >= count:
            raise EdgeVLMError(f"{flag} {device}: torch sees {count} CUDA GPU(s), numbered from 0")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise EdgeVLMError(f"{flag} {device} was given but torch sees no Apple MPS device")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise EdgeVLMError(f"{flag} {device}: edge-vlm runs on cpu, cuda or mps")
    return device
