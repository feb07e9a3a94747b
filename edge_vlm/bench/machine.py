"""The machine and software a benchmark ran on, recorded with every result. Torch-free (versions are read from
the installed distributions' metadata, without importing the libraries)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_DISTRIBUTIONS = ("edge-vlm", "numpy", "torch", "transformers", "onnxruntime", "onnxruntime-gpu", "onnxruntime-genai",
                  "onnx", "bitsandbytes", "tokenizers", "tensorrt")


def _lscpu() -> dict[str, str]:
    if not shutil.which("lscpu"):
        return {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_info() -> dict:
    """Model name, core count, and the SIMD flags that decide int4/int8 kernel speed (AVX2, AVX-512, AMX...)."""
    lscpu = _lscpu()
    flags = lscpu.get("Flags", "").split()
    if not flags and Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    simd = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx", "avx2", "fma", "f16c",
                                                                                "avx_vnni", "asimd", "sve"))
    return {
        "model": lscpu.get("Model name") or platform.processor() or platform.machine(),
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "simd_flags": simd,
        "avx512": any(f.startswith("avx512") for f in flags),
        "hypervisor": lscpu.get("Hypervisor vendor"),
    }


def memory_info() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    return {"total_bytes": int(vm.total), "available_bytes": int(vm.available)}


def jetson_model() -> str | None:
    path = Path("/proc/device-tree/model")
    try:
        text = path.read_text(errors="ignore").strip("\x00 \n")
    except OSError:
        return None
    return text if "jetson" in text.lower() or "orin" in text.lower() else None


def nvidia_gpus() -> list[dict]:
    """Name, memory and driver of each NVIDIA GPU (nvidia-smi), or [] where there is none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in _DISTRIBUTIONS:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_info(),
        "memory": memory_info(),
        "gpus": nvidia_gpus(),
        "jetson": jetson_model(),
        "python_executable": sys.executable,
    }
