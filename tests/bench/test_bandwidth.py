"""The memory-bandwidth figure behind the roofline: the compiled kernels compute what numpy computes, the numpy
fallback is labelled, the method names what was measured, and the bound is never below numpy's own reading.
Small arrays only: measuring the machine is the benchmark's job, these tests check the plumbing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_vlm.bench import stream_kernels
from edge_vlm.bench.bandwidth import (
    NUMPY_FALLBACK,
    array_sizes_mib,
    measure_cpu_bandwidth,
    thread_counts,
)

MiB = 1 << 20
NEEDS_CC = pytest.mark.skipif(stream_kernels.compiler() is None, reason="no C compiler on this machine ($CC, cc, "
                              "gcc, clang): the fallback tests below still run")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private kernel cache, so the tests neither read nor leave a build in the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "edge-vlm" / "stream-kernels"


@pytest.fixture
def kernels(cache):
    built, how = stream_kernels.load()
    assert built is not None, how
    return built


@NEEDS_CC
@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 1001, 100_003])
def test_read_kernels_sum_like_numpy(kernels, count):
    # values over the whole 64-bit range, so the sum wraps around as numpy's uint64 sum does
    words = np.random.default_rng(count).integers(0, 2**64 - 1, count, dtype=np.uint64, endpoint=True)
    expected = int(np.add.reduce(words, dtype=np.uint64)) if count else 0
    assert kernels.read(words.ctypes.data, count) == expected
    assert kernels.read_prefetch(words.ctypes.data, count) == expected


@NEEDS_CC
def test_copy_and_fill_match_numpy(kernels):
    count = 10_007  # not a multiple of any vector width: the tail runs too
    original = np.random.default_rng(0).standard_normal(count)
    out = np.zeros(count)
    kernels.copy(out.ctypes.data, original.ctypes.data, count)
    np.testing.assert_array_equal(out, original)
    kernels.fill(out.ctypes.data + 8 * 7, count - 14, 3.0)  # an interior slice: the edges stay as they were
    np.testing.assert_array_equal(out[7:-7], 3.0)
    np.testing.assert_array_equal(out[:7], original[:7])
    np.testing.assert_array_equal(out[-7:], original[-7:])


@NEEDS_CC
def test_the_build_is_cached_and_reused(cache):
    first, how = stream_kernels.load()
    assert first is not None, how
    built = sorted(cache.glob("stream-*.so"))
    assert len(built) == 1 and not list(cache.glob(".*tmp"))
    stamp = built[0].stat().st_mtime_ns
    second, _ = stream_kernels.load()
    assert second is not None and sorted(cache.glob("stream-*.so")) == built
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not compiled again


@NEEDS_CC
def test_an_unwritable_cache_still_measures(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # the cache cannot be created under a file
    built, how = stream_kernels.load()
    assert built is not None, how
    words = np.arange(100, dtype=np.uint64)
    assert built.read(words.ctypes.data, 100) == 4950


@NEEDS_CC
def test_compiled_method_names_kernel_sizes_and_threads(cache):
    result = measure_cpu_bandwidth(threads=2, repeats=3, sizes_mib=[4, 8], counts=[1, 2])
    assert result["kernel"] == "compiled" and result["fallback_reason"] is None
    method = result["method"]
    assert method.startswith("compiled C kernels (")
    assert "-O3" in method and "read = sum of 64-bit words" in method and "copy" in method
    assert "arrays of 4 and 8 MiB" in method and "1, 2 thread(s)" in method and "best of 3 passes" in method
    # every kernel at every size and thread count, each a positive speed
    seen = {(r["kernel"], r["mib"], r["threads"]) for r in result["measurements"]}
    kernels = {"read", "read-prefetch", "copy", "numpy-read-add", "numpy-read-max", "numpy-copy"}
    assert seen == {(k, s, t) for k in kernels for s in (4, 8) for t in (1, 2)}
    assert all(r["gb_s"] > 0 for r in result["measurements"])
    best = max(r["gb_s"] for r in result["measurements"])
    assert result["used_gb_s"] == best == result["best"]["gb_s"]
    assert f"the bound is the fastest: {result['best']['kernel']} at {result['best']['mib']} MiB" in method


@NEEDS_CC
def test_the_bound_is_never_below_numpy(cache):
    result = measure_cpu_bandwidth(threads=1, repeats=20, sizes_mib=[16], counts=[1])
    assert result["used_gb_s"] >= result["numpy_gb_s"]
    # the compiled loops read at least about as fast as numpy's (a loose margin: a shared machine is noisy)
    assert result["compiled_gb_s"] >= 0.8 * result["numpy_gb_s"], result["measurements"]


def _fallback(monkeypatch, cc: str | None, tmp_path: Path) -> dict:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if cc is None:
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no cc, gcc or clang to be found
    else:
        monkeypatch.setenv("CC", cc)
    return measure_cpu_bandwidth(threads=1, repeats=1, sizes_mib=[4], counts=[1])


@pytest.mark.parametrize("cc,reason", [
    (None, "no C compiler found"),
    ("/nonexistent/bin/cc", "/nonexistent/bin/cc cannot be run"),
    ("false", "false --version exited with code 1"),
])
def test_without_a_compiler_numpy_is_measured_and_labelled(monkeypatch, tmp_path, cc, reason):
    result = _fallback(monkeypatch, cc, tmp_path)
    assert result["kernel"] == "numpy-fallback"
    assert result["method"].startswith("numpy fallback: may under-read the bus, so % of bound may over-report")
    assert NUMPY_FALLBACK in result["method"] and reason in result["method"] and reason in result["fallback_reason"]
    assert {r["kernel"] for r in result["measurements"]} == {"numpy-read-add", "numpy-read-max", "numpy-copy"}
    assert result["used_gb_s"] == result["numpy_gb_s"] > 0 and result["compiled_gb_s"] is None
    assert not (tmp_path / "cache").exists()  # nothing half-built left behind


def test_a_compiler_that_cannot_build_is_a_labelled_fallback(monkeypatch, tmp_path):
    script = tmp_path / "fake-cc"  # answers --version, fails every compile
    script.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "fake-cc 1.0"; exit 0; fi\n'
                      'echo "fake-cc: error: nothing compiles here" >&2\nexit 1\n')
    script.chmod(0o755)
    result = _fallback(monkeypatch, str(script), tmp_path)
    assert result["kernel"] == "numpy-fallback"
    assert "could not build the kernels: fake-cc: error: nothing compiles here" in result["method"]


def test_the_fallback_label_reaches_the_report_header(monkeypatch, tmp_path):
    from edge_vlm.bench.report import _header_lines

    bandwidth = _fallback(monkeypatch, None, tmp_path)
    report = {"settings": {"prompt_tokens": 8, "new_tokens": 2, "runs": 1, "warmup": 0, "threads": 1,
                           "device": "cpu"},
              "machine": {"cpu": {"avx512": False, "model": "test", "usable_cpus": 1, "simd_flags": []},
                          "memory": {"total_bytes": 2**30}, "gpus": []},
              "bandwidth": {"cpu": bandwidth}, "load_average": {"before": None, "after": None},
              "random_weights": False}
    line = next(x for x in _header_lines(report) if x.startswith("bandwidth (cpu)"))
    assert NUMPY_FALLBACK in line


@pytest.mark.parametrize("mib,llc,available,sizes,note", [
    (256, 32 * MiB, 64 << 30, [256, 512], "4x and 16x the 32 MiB last-level cache"),
    (16, 32 * MiB, 64 << 30, [128, 512], "at least 16 MiB"),
    (2048, 32 * MiB, 64 << 30, [2048], "at least 2048 MiB"),
    (256, None, 64 << 30, [256, 1024], "last-level cache unknown"),
    # 1 GiB free: two arrays in a quarter of it -> 128 MiB each, under 4x the cache, and the note says so
    (256, 64 * MiB, 1 << 30, [128], "capped at 128 MiB by the available memory (under 4x the cache"),
    (256, 1 << 30, 64 << 30, [4096, 8192], "capped at 8192 MiB"),
])
def test_array_sizes(mib, llc, available, sizes, note):
    got, text = array_sizes_mib(mib, llc, available)
    assert got == sizes and note in text


@pytest.mark.parametrize("threads,cores,counts", [
    (1, 1, [1]), (2, 2, [1, 2]), (2, 16, [1, 2, 4, 8, 16]), (3, 12, [1, 2, 3, 4, 8, 12]), (32, 4, [1, 2, 4, 8, 16, 32]),
])
def test_thread_counts(threads, cores, counts):
    assert thread_counts(threads, cores) == counts


@NEEDS_CC
def test_another_cpu_or_compiler_gets_its_own_build(cache, monkeypatch):
    """A cache shared between machines (an NFS home) never hands a -march=native library to another CPU, where
    it could stop the bench with an illegal instruction; nor a build from another compiler version."""
    assert stream_kernels.load()[0] is not None
    assert len(list(cache.glob("stream-*.so"))) == 1
    monkeypatch.setattr(stream_kernels, "_cpu_identity", lambda: "model name : another CPU\nflags : sse2")
    assert stream_kernels.load()[0] is not None
    assert len(list(cache.glob("stream-*.so"))) == 2
    real_version = stream_kernels._version
    monkeypatch.setattr(stream_kernels, "_version", lambda cc: real_version(cc) + " (patched)")
    assert stream_kernels.load()[0] is not None
    assert len(list(cache.glob("stream-*.so"))) == 3


@pytest.mark.parametrize("count,threads", [(1000, 3), (8, 2), (7, 2), (1 << 20, 5)])
def test_slices_cover_the_array_on_64_byte_edges(count, threads):
    from edge_vlm.bench.bandwidth import _slices

    parts = _slices(count, threads)
    assert len(parts) == threads and parts[0][0] == 0 and parts[-1][1] == count
    assert all(stop == start for (_, stop), (start, _) in zip(parts[:-1], parts[1:]))
    assert all(start % 8 == 0 for start, _ in parts)  # 8 float64 = 64 bytes: each start is also a uint64 edge


def test_gpu_figure_is_the_faster_of_copy_and_read():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: the torch copy / torch.sum figures are measured only on a GPU")
    from edge_vlm.bench.bandwidth import measure_torch_gpu_bandwidth

    result = measure_torch_gpu_bandwidth(mib=64, repeats=3)
    assert result["read_gb_s"] > 0 and result["copy_gb_s"] > 0
    assert result["used_gb_s"] == max(result["read_gb_s"], result["copy_gb_s"])
    assert "torch.sum" in result["method"] and "copy" in result["method"]
