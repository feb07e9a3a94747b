"""What a benchmark run measures: the model source, the backends and the workload, validated at the boundary.

Torch-free. A scenario file (benchmarks/*.yaml) holds the same keys as the command-line flags; flags given on the
command line win over the scenario.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edge_vlm.errors import EdgeVLMError

TORCH_PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4")  # int8 / nf4: bitsandbytes
ORT_PRECISIONS = ("fp32", "fp16", "int8", "int4")
DEVICES = ("cpu", "cuda")
VERIFY_MODES = ("hash", "size", "none")

_FAMILY_ALIASES = {"torch": "torch", "pytorch": "torch", "pt": "torch",
                   "ort": "ort", "onnxruntime": "ort", "onnx": "ort"}


@dataclass(frozen=True)
class BackendSpec:
    """One backend to measure: 'torch-fp32', 'torch-nf4', 'ort-int4', 'ort-fp16+trt' (vision on TensorRT)."""

    family: str  # "torch" or "ort"
    precision: str
    tensorrt_vision: bool = False

    @property
    def name(self) -> str:
        return f"{self.family}-{self.precision}" + ("+trt" if self.tensorrt_vision else "")

    @property
    def bitsandbytes(self) -> bool:
        return self.family == "torch" and self.precision in ("int8", "nf4")


def parse_backend(text: str) -> BackendSpec:
    """'torch-fp32' / 'onnxruntime-int4' / 'ort-fp16+trt' -> BackendSpec; the message lists what is accepted."""
    raw = text.strip().lower()
    trt = raw.endswith("+trt") or raw.endswith("+tensorrt")
    core = raw.split("+", 1)[0]
    family, _, precision = core.partition("-")
    family = _FAMILY_ALIASES.get(family, "")
    allowed = {"torch": TORCH_PRECISIONS, "ort": ORT_PRECISIONS}.get(family, ())
    if precision not in allowed:
        raise EdgeVLMError(
            f"unknown backend {text!r}: use torch-{{{','.join(TORCH_PRECISIONS)}}} or "
            f"ort-{{{','.join(ORT_PRECISIONS)}}} (onnxruntime-... works too), optionally ort-...+trt for the "
            "vision part on TensorRT"
        )
    if trt and family != "ort":
        raise EdgeVLMError(f"backend {text!r}: +trt (TensorRT vision) applies to onnxruntime backends only")
    return BackendSpec(family, precision, trt)


def parse_backends(values: list[str] | str) -> list[BackendSpec]:
    """A comma-separated list (or several flags) of backends, duplicates dropped, order kept."""
    items = [values] if isinstance(values, str) else list(values)
    specs: list[BackendSpec] = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                spec = parse_backend(part)
                if spec not in specs:
                    specs.append(spec)
    if not specs:
        raise EdgeVLMError("no backend given: e.g. --backend torch-fp32,ort-int4")
    return specs


@dataclass
class BenchSettings:
    """Everything that decides the numbers; recorded verbatim in the report."""

    backends: list[str] = field(default_factory=lambda: ["torch-fp32"])
    model: str | None = None  # checkpoint dir (torch backends)
    bundles: list[str] = field(default_factory=list)  # bundle dirs (onnxruntime backends, matched by precision)
    preset: str | None = None  # build the model in memory (torch backends) -- requires random_weights
    random_weights: bool = False
    prompt_tokens: int = 600
    new_tokens: int = 64
    runs: int = 3
    warmup: int = 1
    threads: int | None = None
    device: str = "cpu"
    image: str | None = None  # None: a synthetic 640x480 image
    verify: str = "size"  # bundle file check at load: 'hash' reads every byte and would dominate load time
    bandwidth_mib: int = 256  # size of each array in the bandwidth measurement
    # image tokens per image for torch backends (edge_vlm.image_tokens; None: every patch token); a bundle's are fixed
    # at export, and a bundle with others is refused rather than timed as if it matched
    image_tokens: int | None = None
    contextual_tokens: int | None = None

    def __post_init__(self):
        for item in fields(self):
            problem = setting_problem(item.name, getattr(self, item.name))
            if problem:
                raise EdgeVLMError(problem)
        if isinstance(self.bundles, str):
            self.bundles = [self.bundles]
        self.backends = [spec.name for spec in parse_backends(self.backends)]
        if self.device not in DEVICES:
            raise EdgeVLMError(f"device {self.device!r} is not one of {DEVICES}")
        if self.verify not in VERIFY_MODES:
            raise EdgeVLMError(f"verify {self.verify!r} is not one of {VERIFY_MODES}")
        if self.preset and self.model:
            raise EdgeVLMError("give either --model DIR or --preset NAME, not both")
        if self.preset and not self.random_weights:
            raise EdgeVLMError(
                f"--preset {self.preset} builds the model without trained weights: add --random-weights to say so "
                "(the results are then labelled random weights everywhere)"
            )
        specs = self.specs
        if any(s.family == "torch" for s in specs) and not (self.model or self.preset):
            raise EdgeVLMError("torch backends need --model CHECKPOINT_DIR or --preset NAME --random-weights")
        if any(s.family == "ort" for s in specs) and not self.bundles:
            raise EdgeVLMError("onnxruntime backends need --bundle DIR (one per precision; `edge-vlm export` makes them)")

    @property
    def specs(self) -> list[BackendSpec]:
        return [parse_backend(name) for name in self.backends]

    def to_dict(self) -> dict:
        return asdict(self)


# whole-number settings: (least, most). The upper bounds only catch typos (an extra digit or three); the bandwidth
# arrays are also held to half the machine's memory (two of them are allocated).
WHOLE_NUMBERS = {"prompt_tokens": (1, 1_000_000), "new_tokens": (1, 1_000_000), "runs": (1, 100_000),
                 "warmup": (0, 100_000), "threads": (1, 4096), "bandwidth_mib": (8, 1 << 20),
                 "image_tokens": (1, 1_000_000), "contextual_tokens": (0, 1_000_000)}
_NAME_LISTS = ("backends", "bundles")  # a name, or a list of names
_MAY_BE_NULL = ("model", "preset", "image", "threads", "image_tokens", "contextual_tokens")


def setting_problem(name: str, value) -> str | None:
    """What is wrong with one setting's value (type and range), or None; the same rules for flags and scenarios."""
    flag = name.replace("_", "-")
    if value is None and name in _MAY_BE_NULL:
        return None
    if name in WHOLE_NUMBERS:
        low, high = WHOLE_NUMBERS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"{flag} must be a whole number from {low} to {high:,}, got {value!r}"
        if name == "bandwidth_mib" and 2 * value * (1 << 20) > _memory_bytes() // 2:
            return f"{flag} {value} needs two arrays of {value} MiB, more than half of this machine's memory"
    elif name == "random_weights":
        if not isinstance(value, bool):
            return f"{flag} must be true or false, got {value!r}"
    elif name in _NAME_LISTS:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            return f"{flag} must be a name or a list of names, got {value!r}"
    elif not isinstance(value, str):
        return f"{flag} must be a text, got {value!r}"
    return None


def _memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def load_scenario(path: str | Path) -> dict:
    """A scenario YAML file -> a dict of BenchSettings keys. Its settings sit under `settings:` (beside `name:` and
    `description:`) or at the top level; an unknown key, or a value of the wrong type or out of range, is an error
    that names the file and the key."""
    from edge_vlm.configfile import read_yaml_mapping

    data = read_yaml_mapping(path, "scenario file")
    settings = data["settings"] if "settings" in data else {k: v for k, v in data.items()
                                                            if k not in ("name", "description")}
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise EdgeVLMError(f"scenario {path}: 'settings' must be a mapping of keys (runs: 3, ...), got "
                           f"{type(settings).__name__} {settings!r}")
    known = {f.name for f in fields(BenchSettings)}
    unknown = sorted(str(key) for key in set(settings) - known)
    if unknown:
        raise EdgeVLMError(f"scenario {path}: unknown settings {unknown}; known: {sorted(known)}")
    for key, value in settings.items():
        problem = setting_problem(key, value)
        if problem:
            raise EdgeVLMError(f"scenario {path}: settings.{key}: {problem}")
    return dict(settings)
