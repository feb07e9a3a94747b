"""Memory bandwidth: measured here (CPU: numpy; GPU: a torch device copy) and nominal figures for known GPUs.

CPU method (hand-written because no maintained Python package measures STREAM-style bandwidth with a chosen thread
count): two arrays of `mib` MiB each, split into `threads` contiguous slices, one Python thread per slice (numpy
releases the GIL inside copies and reductions, so the threads run in parallel). Each pass is timed, the best of
`repeats` passes is kept, as STREAM does, because on a shared machine the slower passes measure the neighbours.
  - read:  a reduction over each slice (bytes counted: the array once), the best of two kernels that numpy
           vectorises well (np.maximum.reduce on float32, np.add.reduce on the same bytes viewed as int64; a
           float32 sum is pairwise and compute-bound, so it would understate the bus).
  - copy:  np.copyto slice to slice (bytes counted: read + write, STREAM's convention).
The roofline uses the larger of the two: the bound is meant as a ceiling, so a generous bandwidth makes the
"% of bound" figure conservative.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Nominal DRAM/HBM bandwidth in GB/s (10^9 B/s), from the vendors' data sheets. Matched against the device name
# (torch.cuda.get_device_name / nvidia-smi) or the Jetson model string, longest pattern first.
NOMINAL_GB_S = {
    "A100-SXM4-40GB": 1555.0,
    "A100-PCIE-40GB": 1555.0,
    "A100 40GB": 1555.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100-PCIE-80GB": 1935.0,
    "H100 80GB HBM3": 3350.0,  # H100 SXM5
    "H100 SXM": 3350.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H200": 4800.0,
    "Jetson AGX Orin": 204.8,
    "Jetson Orin NX": 102.4,
    "Jetson Orin Nano": 68.0,  # 8 GB module; the 4 GB module has 34 GB/s
}


def nominal_bandwidth(device_name: str | None) -> tuple[float, str] | None:
    """(GB/s, matched entry) for a known GPU / Jetson name, else None."""
    if not device_name:
        return None
    lowered = device_name.lower()
    if "orin nano" in lowered and "4gb" in lowered.replace(" ", ""):
        return 34.0, "Jetson Orin Nano 4GB"
    for pattern in sorted(NOMINAL_GB_S, key=len, reverse=True):
        if pattern.lower() in lowered:
            return NOMINAL_GB_S[pattern], pattern
    return None


def _parallel(threads: int, work, slices) -> float:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        start = time.perf_counter()
        list(pool.map(work, slices))
        return time.perf_counter() - start


def measure_cpu_bandwidth(threads: int = 1, mib: int = 256, repeats: int = 5) -> dict:
    """Best-of-`repeats` read and copy bandwidth in GB/s with `threads` threads over `mib`-MiB float32 arrays."""
    threads = max(1, int(threads))
    count = mib * (1 << 20) // 4
    src = np.ones(count, dtype=np.float32)  # written once so every page is really mapped
    dst = np.empty_like(src)
    dst.fill(0)
    # slice edges on 64-byte boundaries, so every slice can also be viewed as int64
    bounds = np.linspace(0, count // 16, threads + 1, dtype=np.int64) * 16
    slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def read_max(part):
        np.maximum.reduce(src[part])

    def read_add(part):
        np.add.reduce(src[part].view(np.int64))

    def copy(part):
        np.copyto(dst[part], src[part])

    best_read = min(_parallel(threads, kernel, slices) for kernel in (read_max, read_add) for _ in range(repeats))
    best_copy = min(_parallel(threads, copy, slices) for _ in range(repeats))
    nbytes = src.nbytes
    read_gb_s, copy_gb_s = nbytes / best_read / 1e9, 2 * nbytes / best_copy / 1e9
    return {
        "device": "cpu",
        "threads": threads,
        "array_mib": mib,
        "repeats": repeats,
        "read_gb_s": read_gb_s,
        "copy_gb_s": copy_gb_s,
        "used_gb_s": max(read_gb_s, copy_gb_s),
        "method": (f"numpy, {threads} thread(s), best of {repeats} passes over {mib} MiB: read = max/add reduction "
                   "(bytes read), copy = np.copyto (read + write bytes); roofline uses the larger"),
    }


def measure_torch_gpu_bandwidth(mib: int = 1024, repeats: int = 10) -> dict:
    """Device-to-device copy bandwidth of the current CUDA GPU (read + write bytes), with the nominal figure."""
    import torch

    count = mib * (1 << 20) // 4
    src = torch.ones(count, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    name = torch.cuda.get_device_name()
    copy_gb_s = 2 * src.nbytes / min(times) / 1e9
    nominal = nominal_bandwidth(name)
    del src, dst
    torch.cuda.empty_cache()
    return {
        "device": "cuda",
        "gpu": name,
        "array_mib": mib,
        "repeats": repeats,
        "copy_gb_s": copy_gb_s,
        # a copy's read and write share the bus: half the copy rate is what a read-only stream may reach at least;
        # the nominal figure is the ceiling. The roofline uses the measured copy rate (read + write bytes).
        "used_gb_s": copy_gb_s,
        "nominal_gb_s": nominal[0] if nominal else None,
        "nominal_entry": nominal[1] if nominal else None,
        "method": f"torch device-to-device copy of {mib} MiB float32, best of {repeats}, read + write bytes",
    }
