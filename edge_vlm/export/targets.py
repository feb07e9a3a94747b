"""Target profiles: what a bundle for a CPU, a CUDA server or a Jetson Orin is built with.

The profiles live here (so an installed package has them); export/targets/*.yaml show the same settings as files a
user can copy and edit, and `--target path/to/file.yaml` loads such a file (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edge_vlm.errors import EdgeVLMError

PRECISIONS = ("fp32", "fp16", "int8", "int4")


@dataclass
class TargetProfile:
    name: str
    execution_provider: str  # the builder's -e: 'cpu' or 'cuda' (sets the decoder's op choices and I/O dtype)
    default_precision: str
    precisions: tuple[str, ...]  # decoder precisions this target runs well
    vision_precision: str  # fp32 on CPU (no fast fp16 kernels), fp16 on GPUs
    accuracy_level: int | None  # MatMulNBits: 4 = int8 activations (fast on CPU); None leaves the GPU kernels' default
    block_size: int = 32
    tensorrt: bool = False  # build the vision part as a TensorRT engine on the device
    description: str = ""
    # image tokens per image (edge_vlm.image_tokens): None = every patch token (the paper's model); K = keep K,
    # `contextual_tokens` of them merged from the dropped patches. Checked against the model at export.
    image_tokens: int | None = None
    contextual_tokens: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise EdgeVLMError(f"target profile: name must be a text, got {self.name!r}")
        if not isinstance(self.precisions, (list, tuple)):
            raise EdgeVLMError(f"target {self.name}: precisions must be a list, e.g. [fp32, int8, int4]")
        self.precisions = tuple(self.precisions)
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size not in (
                16, 32, 64, 128, 256):
            raise EdgeVLMError(f"target {self.name}: block_size must be 16, 32, 64, 128 or 256, got {self.block_size!r}")
        if self.accuracy_level is not None and (isinstance(self.accuracy_level, bool) or self.accuracy_level not in (
                0, 1, 2, 3, 4)):
            raise EdgeVLMError(f"target {self.name}: accuracy_level must be 0-4 or null, got {self.accuracy_level!r}")
        if self.image_tokens is not None and not (_whole(self.image_tokens) and self.image_tokens >= 1):
            raise EdgeVLMError(f"target {self.name}: image_tokens must be a whole number >= 1 or null (every patch "
                               f"token), got {self.image_tokens!r}")
        if not (_whole(self.contextual_tokens) and self.contextual_tokens >= 0):
            raise EdgeVLMError(f"target {self.name}: contextual_tokens must be a whole number >= 0, got "
                               f"{self.contextual_tokens!r}")
        if self.contextual_tokens and self.image_tokens is None:
            raise EdgeVLMError(f"target {self.name}: contextual_tokens {self.contextual_tokens} are part of "
                               "image_tokens K, which is null (every patch token, nothing to merge)")
        if not isinstance(self.tensorrt, bool):
            raise EdgeVLMError(f"target {self.name}: tensorrt must be true or false, got {self.tensorrt!r}")
        if self.execution_provider not in ("cpu", "cuda"):
            raise EdgeVLMError(f"target {self.name}: execution_provider must be cpu or cuda")
        for precision in (*self.precisions, self.default_precision, self.vision_precision):
            if precision not in PRECISIONS:
                raise EdgeVLMError(f"target {self.name}: unknown precision {precision!r}")
        if self.default_precision not in self.precisions:
            raise EdgeVLMError(f"target {self.name}: default precision {self.default_precision} is not in precisions")

    @property
    def gpu(self) -> bool:
        return self.execution_provider == "cuda"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["precisions"] = list(self.precisions)
        return data


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


TARGETS = {
    "cpu": TargetProfile(
        "cpu", "cpu", "int4", ("fp32", "int8", "int4"), "fp32", accuracy_level=4,
        description="x86-64 / Arm CPUs with onnxruntime; decode speed is set by memory bandwidth, so INT4 by default",
    ),
    "cuda": TargetProfile(
        "cuda", "cuda", "fp16", ("fp32", "fp16", "int8", "int4"), "fp16", accuracy_level=None,
        description="NVIDIA GPUs (A100, H100, RTX) with onnxruntime-gpu; FP16 activations and KV cache",
    ),
    "jetson": TargetProfile(
        "jetson-orin", "cuda", "int4", ("fp16", "int8", "int4"), "fp16", accuracy_level=None, tensorrt=True,
        description="Jetson Orin (JetPack 6): onnxruntime-gpu from Jetson Zoo, the vision part on TensorRT, INT4 "
                    "decoder to fit 8-16 GB of shared memory",
    ),
}
TARGETS["jetson-orin"] = TARGETS["jetson"]
TARGET_NAMES = ("cpu", "cuda", "jetson")


def get_target(name_or_path: str) -> TargetProfile:
    """A built-in profile by name (cpu, cuda, jetson / jetson-orin) or a YAML file with the same keys."""
    if name_or_path in TARGETS:
        return TARGETS[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return load_target_file(path)
    raise EdgeVLMError(f"unknown target {name_or_path!r}: choose {', '.join(TARGET_NAMES)} or give a .yaml profile")


def load_target_file(path: Path) -> TargetProfile:
    from edge_vlm.configfile import read_yaml_mapping

    data = read_yaml_mapping(path, "target profile")
    known = {f.name for f in fields(TargetProfile)}
    if not set(data) <= known or "name" not in data:
        extra = sorted(set(data) - known)
        raise EdgeVLMError(f"{path} is not a target profile (unknown keys {extra}); see export/targets/cpu.yaml")
    try:
        return TargetProfile(**data)
    except (TypeError, EdgeVLMError) as exc:  # the message says which key; this names the file
        raise EdgeVLMError(f"target profile {path}: {exc}") from exc
