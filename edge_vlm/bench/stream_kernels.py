"""STREAM-style memory kernels in C, compiled once with the system C compiler and loaded with ctypes.

Why compiled: numpy's reductions and copies are general loops (strides, dtype dispatch, pairwise summation) that do
not always keep enough loads in flight to saturate the memory bus, so a numpy figure can read the bus low, and a
roofline bound built on it makes "% of bound" over-report. These kernels are the plain loops STREAM times, built
with -O3 and the host's vector instructions.

Why written here: no maintained Python package measures STREAM-style bandwidth at a chosen thread count (STREAM
itself is a C program with OpenMP and a fixed array size; the roofline packages on PyPI plot figures, they do not
measure them). The source is small, lives in this module (so packaging needs no data file), and is compiled into the
user cache keyed by the source, the compiler, its flags and the CPU, so a cache shared between machines never
loads a library built for another CPU. ctypes releases the GIL during each call, so Python threads run the kernels
in parallel, one contiguous slice each.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <stddef.h>
#include <stdint.h>

/* Read: a sum of 64-bit words. Sixteen independent accumulators (the compiler turns them into a few vector
   registers), so no add waits on the previous one and the loop is limited by the loads alone. Unsigned, so the
   wrap-around on overflow is defined (the result is only there so the loads cannot be optimised away). */
uint64_t evlm_read(const uint64_t *restrict a, size_t n) {
    uint64_t s[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) s[j] += a[i + j];
    uint64_t total = 0;
    for (int j = 0; j < 16; j++) total += s[j];
    for (; i < n; i++) total += a[i];
    return total;
}

/* The same read with software prefetch 4 KiB ahead: some cores keep more misses in flight this way. */
uint64_t evlm_read_prefetch(const uint64_t *restrict a, size_t n) {
    uint64_t s[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __builtin_prefetch(a + i + 512, 0, 0);
        __builtin_prefetch(a + i + 520, 0, 0);
        for (int j = 0; j < 16; j++) s[j] += a[i + j];
    }
    uint64_t total = 0;
    for (int j = 0; j < 16; j++) total += s[j];
    for (; i < n; i++) total += a[i];
    return total;
}

/* STREAM copy: c[i] = a[i]. */
void evlm_copy(double *restrict c, const double *restrict a, size_t n) {
    for (size_t i = 0; i < n; i++) c[i] = a[i];
}

/* Writes every element, from the thread that will read the slice later (first touch places the pages). */
void evlm_fill(double *restrict a, size_t n, double value) {
    for (size_t i = 0; i < n; i++) a[i] = value;
}
"""

_TIMEOUT_S = 120


class Kernels:
    """The loaded library: read(ptr, n) -> uint64 sum, read_prefetch(ptr, n), copy(dst, src, n),
    fill(ptr, n, value). Pointers are addresses (numpy's `arr.ctypes.data`), n is elements."""

    def __init__(self, path: Path, description: str):
        lib = ctypes.CDLL(str(path))  # CDLL (not PyDLL): the GIL is released during each call
        size_t, ptr = ctypes.c_size_t, ctypes.c_void_p
        for name in ("evlm_read", "evlm_read_prefetch"):
            getattr(lib, name).restype = ctypes.c_uint64
            getattr(lib, name).argtypes = [ptr, size_t]
        lib.evlm_copy.restype = None
        lib.evlm_copy.argtypes = [ptr, ptr, size_t]
        lib.evlm_fill.restype = None
        lib.evlm_fill.argtypes = [ptr, size_t, ctypes.c_double]
        self.read, self.read_prefetch = lib.evlm_read, lib.evlm_read_prefetch
        self.copy, self.fill = lib.evlm_copy, lib.evlm_fill
        self.description = description
        self._lib = lib  # keeps the library loaded as long as this object lives


def compiler() -> list[str] | None:
    """$CC (split like a shell word list) when set, else the first of cc, gcc, clang on PATH; None when there is none."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def arch_flags() -> list[str]:
    """The host's own vector instructions: -march=native on x86, -mcpu=native on Arm (GCC has no -march=native
    there on older releases); nothing elsewhere. On x86, 256-bit vectors even where AVX-512 exists: a streaming
    loop is bound by memory either way, Zen 4 splits 512-bit operations in two, and some Intel cores lower their
    clock for them (on a shared Zen 4 VM the 256-bit build's median pass read about 10 % faster)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "i386"):
        return ["-march=native", "-mprefer-vector-width=256"]
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return ["-mcpu=native"]
    return []


def _cpu_identity() -> str:
    """What decides which instructions a -march=native build may use: the model name and the flags."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        try:
            keep = [line for line in cpuinfo.read_text(errors="replace").splitlines()
                    if line.startswith(("model name", "flags", "Features", "CPU part", "CPU implementer"))]
            return "\n".join(sorted(set(keep)))
        except OSError:
            pass
    return f"{platform.machine()} {platform.processor()}"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-vlm" / "stream-kernels"


def _version(cc: list[str]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"the C compiler {shlex.join(cc)} cannot be run ({exc})") from exc
    if out.returncode != 0:
        raise RuntimeError(f"the C compiler {shlex.join(cc)} --version exited with code {out.returncode}")
    return (out.stdout.strip().splitlines() or ["unknown version"])[0]


def _compile(cc: list[str], flags: list[str], folder: Path) -> Path:
    source = folder / "stream_kernels.c"
    source.write_text(SOURCE)
    library = folder / "stream_kernels.so"
    cmd = [*cc, "-O3", *flags, "-shared", "-fPIC", "-o", str(library), str(source)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{shlex.join(cc)} failed to run ({exc})") from exc
    if out.returncode != 0 or not library.is_file():
        last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        raise RuntimeError(f"{shlex.join(cc)} could not build the kernels: {last}")
    return library


def _build(cc: list[str], version: str) -> Kernels:
    """Compile (or find in the cache) and load. Tries the host's vector flags first, then plain -O3."""
    errors = []
    for flags in ([arch_flags(), []] if arch_flags() else [[]]):
        description = f"{shlex.join([*cc, '-O3', *flags])}; {version}"
        key = hashlib.sha256("\0".join([SOURCE, shlex.join(cc), version, " ".join(flags), platform.machine(),
                                        _cpu_identity()]).encode()).hexdigest()[:24]
        cached = cache_dir() / f"stream-{key}.so"
        if cached.is_file():
            try:
                return Kernels(cached, description)
            except OSError:
                pass  # a damaged cache entry: build again below
        try:
            with tempfile.TemporaryDirectory(prefix="edge-vlm-stream-") as tmp:
                library = _compile(cc, flags, Path(tmp))
                try:  # keep it for the next run; a read-only cache only costs a compile per run
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    staged = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
                    try:
                        shutil.copyfile(library, staged)
                        os.replace(staged, cached)  # whole or absent, even with two runs building at once
                    finally:
                        staged.unlink(missing_ok=True)
                    return Kernels(cached, description)
                except OSError:
                    return Kernels(library, description)  # loaded before the folder goes: the mapping stays
        except RuntimeError as exc:
            errors.append(str(exc))
    raise RuntimeError(errors[-1])


def load() -> tuple[Kernels | None, str]:
    """(kernels, how they were built) or (None, why not): no C compiler, or it could not build them."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler found ($CC unset; no cc, gcc or clang on PATH)"
    try:
        kernels = _build(cc, _version(cc))
    except (RuntimeError, OSError) as exc:
        return None, str(exc)
    return kernels, kernels.description
