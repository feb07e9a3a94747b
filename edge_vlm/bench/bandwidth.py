"""Memory bandwidth: measured here (CPU: compiled STREAM-style kernels, numpy beside them; GPU: torch) and nominal
figures for known GPUs.

The roofline's bound is `bandwidth / bytes per token`, and it must never be too low: a bandwidth figure that reads
the bus short makes "% of bound" over-report. So the CPU figure is the fastest of everything measured, as STREAM
keeps the best pass:
  - kernels: the C loops of edge_vlm.bench.stream_kernels (built once with the system compiler at -O3 and the
    host's vector instructions): read = a sum of 64-bit words (bytes read; plain and with software prefetch) and
    STREAM's copy (bytes read + bytes written, as STREAM counts); and numpy's reductions and np.copyto on the same
    arrays, so the report shows how far numpy alone would have read. (No triad: a decode step reads, and with
    write-allocate caches a kernel that writes moves bytes STREAM does not count, so it never beats the read);
  - sizes: 4x and 16x the last-level cache, never under `mib` (256 by default), so no pass reads from the cache;
    capped so that the two arrays fit in a quarter of the available memory;
  - threads: 1, the powers of two, the bench's thread count and the usable cores; each thread reads one
    contiguous slice (ctypes and numpy release the GIL in these loops);
  - best of `repeats` passes (10, as STREAM runs) for each (kernel, size, threads): on a shared machine the slower
    passes measure the neighbours.
Without a working C compiler the numpy kernels alone are measured and the method says so, in words: a numpy figure
may under-read the bus, so "% of bound" may over-report.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_vlm.bench import stream_kernels

NUMPY_FALLBACK = "numpy fallback: may under-read the bus, so % of bound may over-report"

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


def last_level_cache_bytes() -> int | None:
    """The largest cache of CPU 0 (Linux sysfs), or glibc's L3 figure, or None when neither says."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    if sizes:
        return max(sizes)
    try:
        value = os.sysconf("SC_LEVEL3_CACHE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return value if value > 0 else None


def _available_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - any failure only means no cap is known
        return None


def array_sizes_mib(mib: int, llc_bytes: int | None, available_bytes: int | None) -> tuple[list[int], str]:
    """The array sizes to measure (MiB, ascending) and a note on how they were chosen."""
    llc_mib = math.ceil(llc_bytes / (1 << 20)) if llc_bytes else None
    wanted = sorted({max(mib, 4 * llc_mib), max(mib, 16 * llc_mib)}) if llc_mib else sorted({mib, 4 * mib})
    note = f"4x and 16x the {llc_mib} MiB last-level cache, at least {mib} MiB" if llc_mib else \
        f"last-level cache unknown: {mib} MiB and 4x that"
    cap = available_bytes // 8 // (1 << 20) if available_bytes else None  # two arrays in a quarter of the free memory
    if cap and wanted[-1] > cap:
        wanted = sorted({min(size, cap) for size in wanted})
        note += f"; capped at {cap} MiB by the available memory"
        if llc_mib and wanted[-1] < 4 * llc_mib:
            note += " (under 4x the cache: part of a pass may come from the cache)"
    return wanted, note


def thread_counts(threads: int, cores: int | None = None) -> list[int]:
    """1, the powers of two below the larger of `threads` and the usable cores, and both of those."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    top = max(1, threads, cores)
    return sorted({1, max(1, threads), max(1, cores)} | {2 ** k for k in range(top.bit_length()) if 2 ** k <= top})


def _slices(count: int, threads: int) -> list[tuple[int, int]]:
    """`threads` contiguous [start, stop) slices of `count` float64 elements, edges on 64-byte boundaries."""
    edges = np.linspace(0, count // 8, threads + 1, dtype=np.int64) * 8
    edges[-1] = count
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _kernels(compiled, a: np.ndarray, c: np.ndarray) -> dict:
    """{name: (work(start, stop), bytes moved per element)} over the float64 arrays a (read) and c (written)."""
    a_words, a_f32 = a.view(np.uint64), a.view(np.float32)
    found = {
        # numpy: the two reductions it vectorises well (a float32 sum is pairwise and compute-bound) and a copy
        "numpy-read-add": (lambda i, j: np.add.reduce(a_words[i:j]), 8),
        "numpy-read-max": (lambda i, j: np.maximum.reduce(a_f32[2 * i:2 * j]), 8),
        "numpy-copy": (lambda i, j: np.copyto(c[i:j], a[i:j]), 16),
    }
    if compiled is not None:
        size = a.itemsize
        pa, pc = a.ctypes.data, c.ctypes.data
        found.update({
            "read": (lambda i, j: compiled.read(pa + i * size, j - i), 8),
            "read-prefetch": (lambda i, j: compiled.read_prefetch(pa + i * size, j - i), 8),
            "copy": (lambda i, j: compiled.copy(pc + i * size, pa + i * size, j - i), 16),
        })
    return found


def _fill(compiled, array: np.ndarray, value: float):
    if compiled is not None:
        return lambda i, j: compiled.fill(array.ctypes.data + array.itemsize * i, j - i, value)
    return lambda i, j: array[i:j].fill(value)


def _timed(pool: ThreadPoolExecutor, work, slices) -> float:
    start = time.perf_counter()
    for future in [pool.submit(work, i, j) for i, j in slices]:
        future.result()
    return time.perf_counter() - start


def _measure_size(compiled, mib: int, counts: list[int], repeats: int) -> list[dict]:
    """Best-of-`repeats` GB/s of every kernel at every thread count over two arrays of `mib` MiB."""
    count = mib * (1 << 20) // 8
    a, c = np.empty(count, dtype=np.float64), np.empty(count, dtype=np.float64)
    with ThreadPoolExecutor(max_workers=max(counts)) as pool:  # first touch from the threads that will read
        for array, value in ((a, 1.0), (c, 0.0)):
            _timed(pool, _fill(compiled, array, value), _slices(count, max(counts)))
    kernels = _kernels(compiled, a, c)
    rows = []
    for threads in counts:
        slices = _slices(count, threads)
        best = {name: math.inf for name in kernels}
        with ThreadPoolExecutor(max_workers=threads) as pool:
            _timed(pool, kernels["numpy-read-add"][0], slices)  # starts the threads, warms the page tables
            for _ in range(repeats):  # kernels interleaved, so a burst of load on the machine hits them all alike
                for name, (work, _) in kernels.items():
                    best[name] = min(best[name], _timed(pool, work, slices))
        rows += [{"kernel": name, "mib": mib, "threads": threads, "gb_s": per * count / best[name] / 1e9}
                 for name, (_, per) in kernels.items()]
    return rows


def _best(rows: list[dict], prefix: tuple[str, ...]) -> float | None:
    speeds = [r["gb_s"] for r in rows if r["kernel"].startswith(prefix)]
    return max(speeds) if speeds else None


def measure_cpu_bandwidth(threads: int = 1, mib: int = 256, repeats: int = 10, sizes_mib: list[int] | None = None,
                          counts: list[int] | None = None) -> dict:
    """The CPU's memory bandwidth in GB/s: the fastest of every kernel, size and thread count measured (see the
    module's docstring). `sizes_mib` / `counts` replace the automatic choices (the tests use small ones)."""
    threads = max(1, int(threads))
    if sizes_mib:
        sizes, size_note = sorted(set(sizes_mib)), "sizes given by the caller"
    else:
        sizes, size_note = array_sizes_mib(mib, last_level_cache_bytes(), _available_bytes())
    counts = sorted(set(counts)) if counts else thread_counts(threads)
    compiled, how = stream_kernels.load()
    rows = [row for size in sizes for row in _measure_size(compiled, size, counts, repeats)]
    best = max(rows, key=lambda r: r["gb_s"])
    numpy_gb_s = _best(rows, ("numpy-",))
    compiled_gb_s = _best(rows, ("read", "copy"))
    at_threads = [r["gb_s"] for r in rows if r["threads"] == threads]
    scope = (f"arrays of {' and '.join(map(str, sizes))} MiB ({size_note}), {', '.join(map(str, counts))} thread(s), "
             f"best of {repeats} passes each; the bound is the fastest: {best['kernel']} at {best['mib']} MiB, "
             f"{best['threads']} thread(s)")
    if compiled is not None:
        method = (f"compiled C kernels ({how}): read = sum of 64-bit words (bytes read; plain and prefetching), copy "
                  f"(bytes read + written, as STREAM counts); numpy reductions and np.copyto beside them "
                  f"({numpy_gb_s:.1f} GB/s at best); {scope}")
    else:
        method = (f"{NUMPY_FALLBACK} (no compiled kernels: {how}); numpy reductions (bytes read) and np.copyto "
                  f"(bytes read + written); {scope}")
    return {
        "device": "cpu",
        "threads": threads,
        "array_mib": sizes[-1],
        "sizes_mib": sizes,
        "thread_counts": counts,
        "repeats": repeats,
        "kernel": "compiled" if compiled is not None else "numpy-fallback",
        "compiler": how if compiled is not None else None,
        "fallback_reason": None if compiled is not None else how,
        "read_gb_s": _best(rows, ("read",) if compiled is not None else ("numpy-read",)),
        "copy_gb_s": _best(rows, ("copy",) if compiled is not None else ("numpy-copy",)),
        "numpy_gb_s": numpy_gb_s,
        "compiled_gb_s": compiled_gb_s if compiled is not None else None,
        "at_bench_threads_gb_s": max(at_threads) if at_threads else None,
        "best": best,
        "measurements": rows,
        # the maximum over everything, the numpy kernels included: a ceiling must never be below what was read
        "used_gb_s": best["gb_s"],
        "method": method,
    }


def _cuda_best_s(work, repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return min(times)


def _cuda_copy_and_read(mib: int, repeats: int) -> tuple[float, float]:
    import torch

    src = torch.ones(mib * (1 << 20) // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    total = torch.empty((), dtype=torch.float32, device="cuda")
    dst.copy_(src)  # first use: allocation and kernel loading stay out of the timings
    torch.sum(src, out=total)
    torch.cuda.synchronize()
    copy_gb_s = 2 * src.nbytes / _cuda_best_s(lambda: dst.copy_(src), repeats) / 1e9
    read_gb_s = src.nbytes / _cuda_best_s(lambda: torch.sum(src, out=total), repeats) / 1e9
    return copy_gb_s, read_gb_s


def measure_torch_gpu_bandwidth(mib: int = 1024, repeats: int = 10) -> dict:
    """The current CUDA GPU's bandwidth: the faster of a device-to-device copy (bytes read + written) and a
    reduction (torch.sum over the array: bytes read; a sum is a few flops per 4 bytes, far under what the GPU
    computes, so it runs at the memory's pace), best of `repeats` each, with the nominal figure beside them."""
    import torch

    copy_gb_s, read_gb_s = _cuda_copy_and_read(mib, repeats)
    torch.cuda.empty_cache()  # the arrays went with the helper's frame
    name = torch.cuda.get_device_name()
    nominal = nominal_bandwidth(name)
    return {
        "device": "cuda",
        "gpu": name,
        "array_mib": mib,
        "repeats": repeats,
        "copy_gb_s": copy_gb_s,
        "read_gb_s": read_gb_s,
        # the faster of the two: a ceiling must not be below what the GPU was seen to move. The nominal figure
        # (the data sheet's) is the hard ceiling, and the report gives "% of the nominal bound" beside it.
        "used_gb_s": max(copy_gb_s, read_gb_s),
        "nominal_gb_s": nominal[0] if nominal else None,
        "nominal_entry": nominal[1] if nominal else None,
        "method": (f"torch on the GPU, {mib} MiB float32, best of {repeats} each: device-to-device copy "
                   f"(bytes read + written) {copy_gb_s:.0f} GB/s, torch.sum (bytes read) {read_gb_s:.0f} GB/s; "
                   "the bound uses the faster"),
    }
