"""One backend, measured in a fresh process: `python -m edge_vlm.bench.worker JOB.json OUT.json`.

A process per backend keeps peak RSS honest (one backend's high-water mark never lands on another's) and keeps
torch out of the onnxruntime measurement. The job holds the settings, the backend name and its bundle; the
result (or the error message) is written atomically to OUT.json. Progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from edge_vlm.bench.machine import load_average
from edge_vlm.bench.power import select_meter
from edge_vlm.bench.roofline import decode_context
from edge_vlm.bench.settings import BenchSettings, parse_backend
from edge_vlm.bench.stats import decode_summary, summarize
from edge_vlm.bench.workload import prompt_ids, synthetic_image
from edge_vlm.errors import EdgeVLMError
from edge_vlm.fileio import atomic_write

STAGES = ("preprocess_ms", "vision_ms", "prefill_ms", "ttft_ms", "decode_ms", "e2e_ms")


def peak_rss_bytes() -> int | None:
    """The process's resident-set high-water mark (the kernel's own figure: nothing between samples is missed)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def run_query(backend, image, ids: list[int], new_tokens: int, meter=None) -> dict:
    """One image question, stage by stage; the decode runs exactly `new_tokens` steps (EOS is not special)."""
    clock = time.perf_counter
    start = clock()
    pixels = backend.preprocess(image)
    backend.sync()
    after_pre = clock()
    features = backend.vision(pixels)
    backend.sync()
    after_vision = clock()
    token, cache = backend.prefill(ids, features, reserve=len(ids) + new_tokens)
    backend.sync()
    after_prefill = clock()
    tokens, steps = [token], []
    mark = meter.begin() if meter else None
    for _ in range(new_tokens):
        step = clock()
        token, cache = backend.decode(token, cache)
        steps.append((clock() - step) * 1e3)
        tokens.append(token)
    backend.sync()
    end = clock()
    energy = meter.end(mark) if meter else None
    return {
        "preprocess_ms": (after_pre - start) * 1e3,
        "vision_ms": (after_vision - after_pre) * 1e3,
        "prefill_ms": (after_prefill - after_vision) * 1e3,
        "ttft_ms": (after_prefill - start) * 1e3,
        "decode_ms": (end - after_prefill) * 1e3,
        "e2e_ms": (end - start) * 1e3,
        "step_ms": steps,
        "tokens": tokens,
        "energy_j": energy() if energy else None,
    }


def _energy_summary(meter, reason: str, runs: list[dict]) -> dict:
    if meter is None:
        return {"available": False, "reason": reason}
    joules = [r["energy_j"] for r in runs if r["energy_j"] is not None]
    if not joules:
        return {"available": False, "source": meter.source, "reason": "the meter returned no samples in the decode"}
    steps = sum(len(r["step_ms"]) for r in runs if r["energy_j"] is not None)
    seconds = sum(r["decode_ms"] for r in runs if r["energy_j"] is not None) / 1e3
    return {
        "available": True,
        "source": meter.source,
        "covers": meter.covers,
        "joules_per_token": sum(joules) / steps,
        "mean_power_w": sum(joules) / seconds,
    }


def measure(job: dict, progress: bool = True) -> dict:
    """Load one backend, run warmup + measured queries, return every figure the report needs."""
    settings = BenchSettings(**job["settings"])
    spec = parse_backend(job["backend"])
    load_before = load_average()
    meter, reason = select_meter(settings.device)
    if meter is not None:
        meter.start()  # before loading, so a GPU memory peak during load is seen
    try:
        clock = time.perf_counter
        start = clock()
        from edge_vlm.bench.backends import make_backend

        backend = make_backend(spec, settings, job.get("bundle"))
        import_s = clock() - start
        profile_prefix = job.get("profile_prefix")
        start = clock()
        if profile_prefix:
            from edge_vlm.bench.profile import ort_profiling

            with ort_profiling(profile_prefix):
                backend.load()
        else:
            backend.load()
        backend.sync()
        load_s = clock() - start
        rss_after_load = current_rss_bytes()

        if settings.image:
            from edge_vlm.imaging import load_image

            image = load_image(settings.image)
        else:
            image = synthetic_image()
        ids, prompt_description = prompt_ids(backend.tokenizer, backend.num_image_tokens, settings.prompt_tokens)
        if settings.prompt_tokens + settings.new_tokens > backend.context_length:
            raise EdgeVLMError(
                f"--prompt-tokens {settings.prompt_tokens} + --new-tokens {settings.new_tokens} exceed the model's "
                f"context of {backend.context_length} tokens"
            )
        runs = []
        total = settings.warmup + settings.runs
        bar = _progress(total, spec.name, progress)
        for index in range(total):
            measured = index >= settings.warmup
            result = run_query(backend, image, ids, settings.new_tokens, meter if measured else None)
            if measured:
                runs.append(result)
            bar.update(1)
        bar.close()

        stages = {name: summarize([r[name] for r in runs]) for name in STAGES}
        prefill_tps = [settings.prompt_tokens / (r["prefill_ms"] / 1e3) for r in runs]
        context = decode_context(settings.prompt_tokens, settings.new_tokens)
        peak_gpu, peak_gpu_source = backend.peak_gpu_bytes(), "torch.cuda.max_memory_allocated"
        if peak_gpu is None and meter is not None and meter.peak_memory_mib() is not None:
            peak_gpu = int(meter.peak_memory_mib() * (1 << 20))
            peak_gpu_source = f"{meter.source}: peak memory used on the device (all processes)"
        describe = backend.describe()
        profile = _profile(backend, total, settings.new_tokens) if profile_prefix else None
        return {
            "name": spec.name,
            "family": spec.family,
            "precision": spec.precision,
            "device": settings.device,
            "status": "ok",
            "random_weights": bool(backend.random_weights),
            "info": describe,
            "import_s": import_s,
            "load_s": load_s,
            "memory": {
                "peak_rss_bytes": peak_rss_bytes(),
                "rss_after_load_bytes": rss_after_load,
                "peak_gpu_bytes": peak_gpu,
                "peak_gpu_source": peak_gpu_source if peak_gpu is not None else None,
            },
            "stages": stages,
            "prefill_tokens_per_s": summarize(prefill_tps),
            "decode": {**decode_summary([r["step_ms"] for r in runs]), "samples_ms": [r["step_ms"] for r in runs]},
            "decode_bytes": backend.decode_bytes(context).to_dict(),
            "energy": _energy_summary(meter, reason, runs),
            "tokens": runs[0]["tokens"][:16],
            "prompt": prompt_description,
            "load_average": {"before": load_before, "after": load_average()},
            **({"profile": profile} if profile else {}),
        }
    finally:
        if meter is not None:
            meter.stop()


def _profile(backend, queries: int, new_tokens: int) -> dict:
    """Close the backend's profiled sessions and summarise their files (onnxruntime backends only)."""
    from edge_vlm.bench.profile import decoder_phases, summarize_profile

    files = backend.end_profiling()
    phases = {"decoder": decoder_phases(queries, new_tokens)}
    return {"files": files,
            "sessions": {name: summarize_profile(path, phases.get(name)) for name, path in files.items()}}


def _progress(total: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"bench {name}", unit="query", file=sys.stderr, disable=not enabled, leave=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m edge_vlm.bench.worker JOB.json OUT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        result = measure(job, progress=job.get("progress", True))
    except EdgeVLMError as exc:
        result = {"name": job["backend"], "status": "error", "error": str(exc)}
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # reported per backend: one broken backend must not lose the others' numbers
        result = {"name": job["backend"], "status": "error", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
    atomic_write(out, json.dumps(result), "worker result")
    return 0


if __name__ == "__main__":
    sys.exit(main())
