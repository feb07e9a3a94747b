"""The benchmark run: machine facts and memory bandwidth here, then each backend in its own worker process, then
the roofline, assembled into one report dict (the JSON document of edge_vlm.bench.schema). Torch-free."""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from edge_vlm.bench.artifacts import bundle_manifest, check_model_dir, check_torch_inputs, pick_bundles
from edge_vlm.bench.bandwidth import measure_cpu_bandwidth, nominal_bandwidth
from edge_vlm.bench.machine import jetson_model, load_average, machine_info, versions
from edge_vlm.bench.roofline import DecodeBytes, roofline
from edge_vlm.bench.schema import SCHEMA_ID, SCHEMA_VERSION
from edge_vlm.bench.settings import BenchSettings
from edge_vlm.errors import EdgeVLMError

RANDOM_WEIGHTS_LABEL = "RANDOM WEIGHTS (speed only: the answers are meaningless)"


def _run_worker(job: dict, timeout_s: float | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="edge-vlm-bench-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        # the worker's stdout goes to our stderr: our stdout carries only the table and the closing JSON line
        proc = subprocess.run([sys.executable, "-m", "edge_vlm.bench.worker", str(job_path), str(out_path)],
                              stdout=sys.stderr, env=env, timeout=timeout_s)
        if proc.returncode == 130:
            raise KeyboardInterrupt
        if not out_path.is_file():
            return {"name": job["backend"], "status": "error",
                    "error": f"the worker process exited with code {proc.returncode} without a result "
                             "(killed for memory? see the messages above)"}
        return json.loads(out_path.read_text())


def gpu_bandwidth() -> dict:
    """Measured (torch device copy, in a separate process so no backend's memory figures include it) and nominal."""
    probe = ("import json\nfrom edge_vlm.bench.bandwidth import measure_torch_gpu_bandwidth as m\n"
             "print(json.dumps(m()))")
    result: dict = {"device": "cuda", "used_gb_s": None}
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
        if out.returncode == 0:
            result = json.loads(out.stdout.strip().splitlines()[-1])
        else:
            result["error"] = (out.stderr.strip().splitlines() or ["torch probe failed"])[-1]
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
        result["error"] = str(exc)
    if result.get("nominal_gb_s") is None:
        from edge_vlm.bench.machine import nvidia_gpus

        name = jetson_model() or (nvidia_gpus() or [{}])[0].get("name")
        nominal = nominal_bandwidth(name)
        result.update({"gpu": name, "nominal_gb_s": nominal[0] if nominal else None,
                       "nominal_entry": nominal[1] if nominal else None})
    if result.get("used_gb_s") is None:  # nothing measured: the nominal figure is all there is
        result["used_gb_s"] = result.get("nominal_gb_s")
        result["method"] = "nominal only (no torch with CUDA to measure with)"
    return result


def _add_roofline(result: dict, bandwidth: dict) -> None:
    if result.get("status") != "ok":
        return
    link = bandwidth.get(result["device"]) or {}
    decode = DecodeBytes(**{k: v for k, v in result["decode_bytes"].items() if k != "total"})
    tps = result["decode"]["tokens_per_s"]
    source = link.get("method", "")
    result["roofline"] = roofline(decode, link.get("used_gb_s"), tps, source)
    nominal = link.get("nominal_gb_s")
    if nominal:
        bound = nominal * 1e9 / decode.total
        result["roofline"]["nominal_bandwidth_gb_s"] = nominal
        result["roofline"]["nominal_bound_tokens_per_s"] = bound
        result["roofline"]["percent_of_nominal_bound"] = 100.0 * tps / bound


def _profile_pass(job: dict, settings: BenchSettings, profile_dir: str, timeout_s, progress: bool) -> dict:
    Path(profile_dir).mkdir(parents=True, exist_ok=True)
    profiled_settings = {**settings.to_dict(), "warmup": 1, "runs": 1}
    prefix = str(Path(profile_dir).resolve() / job["backend"].replace("+", "_"))
    if progress:
        print(f"edge-vlm bench: profiling {job['backend']} (separate pass) ...", file=sys.stderr, flush=True)
    profiled = _run_worker({**job, "settings": profiled_settings, "profile_prefix": prefix}, timeout_s)
    if profiled.get("status") != "ok":
        return {"error": profiled.get("error", "the profiling pass failed")}
    return {**profiled["profile"], "note": "separate pass: 1 warm-up + 1 query with ONNX Runtime's profiler on; "
                                           "ms per call are the profiler's, not the reported timings"}


def _artifacts_random(settings: BenchSettings, bundles: dict[str, str]) -> bool:
    """Whether the checkpoint or a bundle says random weights (known even when a backend fails to load)."""
    from edge_vlm.bench.artifacts import bundle_random_weights, checkpoint_random_weights

    if settings.model and checkpoint_random_weights(settings.model):
        return True
    return any(bundle_random_weights(bundle_manifest(d)) for d in bundles.values())


def prepare(settings: BenchSettings, prompt_source: str | None = "prompt_tokens",
            log=None) -> tuple[BenchSettings, dict[str, str]]:
    """Every check that needs no worker, so a bad input is one line and exit 2 before minutes of measuring: the
    checkpoint folder, the image (decoded), a bundle per onnxruntime backend (its manifest, its files' sizes and the
    manifest against its graphs, as the runtime checks them), and the prompt length against the smallest context
    among the models. Returns the settings to run (the prompt fitted, see fit_prompt) and {precision: bundle dir}."""
    from edge_vlm.runtime.bundle import check_contents, verify_files

    specs = settings.specs
    _check_providers(settings)
    torch_specs = [s for s in specs if s.family == "torch"]
    if settings.model and torch_specs:
        check_model_dir(settings.model)
    if torch_specs and (settings.model or settings.device == "cuda"):
        check_torch_inputs(settings.model, settings.device)
    if settings.image:
        from edge_vlm.imaging import load_image

        load_image(settings.image)
    ort_precisions = [s.precision for s in specs if s.family == "ort"]
    bundles = pick_bundles(settings.bundles, ort_precisions) if ort_precisions else {}
    for directory in bundles.values():
        manifest = bundle_manifest(directory)
        verify_files(directory, manifest, "none" if settings.verify == "none" else "size")  # the hash: in the worker
        check_contents(directory, manifest)
    _check_image_tokens(settings, bundles)
    fitted = fit_prompt(settings, _contexts(settings, bundles), prompt_source, log)
    _check_prompt_minimum(fitted, bundles, prompt_source)
    return fitted, bundles


def _check_providers(settings: BenchSettings) -> None:
    """Each onnxruntime backend's execution providers (CUDA for --device cuda, TensorRT for +trt) are usable here,
    else the fix in one line (edge_vlm.runtime.providers.choose, as the runtime would say it at load)."""
    from edge_vlm.bench.backends.ort_backend import providers_for
    from edge_vlm.deps import available
    from edge_vlm.runtime.providers import choose

    for spec in settings.specs:
        wanted = providers_for(spec, settings.device) if spec.family == "ort" else ["cpu"]
        if wanted != ["cpu"] and available("onnxruntime"):  # without onnxruntime the worker says what to install
            try:
                choose(wanted)
            except EdgeVLMError as exc:
                raise EdgeVLMError(f"{spec.name} with --device {settings.device}: {exc}") from None


def _check_prompt_minimum(settings: BenchSettings, bundles: dict[str, str], source: str | None) -> None:
    """The prompt holds at least the image tokens, the turn's text and the question (edge_vlm.bench.workload), for
    every model the run loads whose tokenizer is on disk (a preset's is built by its worker)."""
    from edge_vlm.bench.workload import minimum_prompt_tokens, too_short
    from edge_vlm.image_tokens import checkpoint_patch_tokens
    from edge_vlm.runtime.bundle import Bundle
    from edge_vlm.tokenizer import TextTokenizer

    models = []  # (tokenizer folder, image tokens)
    if settings.model and any(s.family == "torch" for s in settings.specs):
        patches = settings.image_tokens or checkpoint_patch_tokens(settings.model)
        if patches:
            models.append((Path(settings.model), patches))
    for directory in bundles.values():
        bundle = Bundle(Path(directory), bundle_manifest(directory))
        models.append((bundle.file("tokenizer").parent, bundle.model["num_image_tokens"]))
    for folder, image_tokens in models:
        least = minimum_prompt_tokens(TextTokenizer.from_dir(folder), image_tokens)
        if settings.prompt_tokens < least:
            label = source or f"--prompt-tokens (fitted to the context with --new-tokens {settings.new_tokens})"
            raise too_short(settings.prompt_tokens, least, image_tokens, label)


def _check_image_tokens(settings: BenchSettings, bundles: dict[str, str]) -> None:
    """An image-token setting (edge_vlm.image_tokens) possible for the torch backends' model, and the one each
    bundle was exported with: a bundle's K is in its graph, and timing another K under the asked-for name would
    mislabel the numbers."""
    from edge_vlm.image_tokens import checkpoint_patch_tokens, choose
    from edge_vlm.runtime.bundle import MANIFEST_FILE, image_tokens

    asked, contextual = settings.image_tokens, settings.contextual_tokens
    if asked is None and contextual is None:
        return
    if any(s.family == "torch" for s in settings.specs):
        if settings.model:
            patches = checkpoint_patch_tokens(settings.model)
        else:
            from edge_vlm.model.presets import get_preset, num_image_tokens

            patches = num_image_tokens(get_preset(settings.preset)["vision"])
        if patches is not None:  # else the worker's load says what is wrong with the checkpoint
            choose(asked, contextual, patches)
    for directory in bundles.values():
        k, n, selection = image_tokens(Path(directory) / MANIFEST_FILE, bundle_manifest(directory))
        kept = selection.contextual if selection else 0
        if asked not in (None, k) or contextual not in (None, kept):
            raise EdgeVLMError(f"image_tokens {asked if asked is not None else k} ({contextual or 0} contextual) was "
                               f"asked for, but the bundle {directory} gives {k} of {n} ({kept} contextual), fixed "
                               "at export: export it with that setting, or leave the setting out")


def _contexts(settings: BenchSettings, bundles: dict[str, str]) -> dict[str, int]:
    """{model described: its context length} for every model the run loads."""
    from edge_vlm.bench.artifacts import checkpoint_context

    found = {}
    if any(s.family == "torch" for s in settings.specs):
        if settings.model and checkpoint_context(settings.model):
            found[f"the checkpoint {settings.model}"] = checkpoint_context(settings.model)
        elif settings.preset:
            from edge_vlm.model.presets import get_preset  # imports torch, which a preset's worker loads anyway

            found[f"the preset {settings.preset}"] = int(get_preset(settings.preset)["text"]["max_position_embeddings"])
    for directory in bundles.values():
        found[f"the bundle {directory}"] = int(bundle_manifest(directory)["model"]["context_length"])
    return found


def fit_prompt(settings: BenchSettings, contexts: dict[str, int], source: str | None, log=None) -> BenchSettings:
    """The prompt and the new tokens must fit the smallest context. `source` names where --prompt-tokens came from
    (a flag, a scenario); a length the user chose that does not fit is refused. None: it is the default (600, the
    issue's CPU target), which is lowered to fit, and `log` says so."""
    if not contexts:
        return settings
    where, context = min(contexts.items(), key=lambda item: item[1])
    room = context - settings.new_tokens
    if room < 1:
        raise EdgeVLMError(f"--new-tokens {settings.new_tokens} leaves no room for a prompt in the {context}-token "
                           f"context of {where}")
    if settings.prompt_tokens <= room:
        return settings
    if source is not None:
        raise EdgeVLMError(f"{source} {settings.prompt_tokens} + {settings.new_tokens} new tokens exceed the "
                           f"{context}-token context of {where}: use {room} or fewer")
    if log is not None:
        log(f"edge-vlm bench: a {room}-token prompt (the default {settings.prompt_tokens} + {settings.new_tokens} new "
            f"tokens would exceed the {context}-token context of {where})")
    return replace(settings, prompt_tokens=room)


def run_benchmark(settings: BenchSettings, command: str, progress: bool = True,
                  worker_timeout_s: float | None = None, profile_dir: str | None = None,
                  bundles: dict[str, str] | None = None) -> dict:
    """Measure every backend of `settings`; a backend that fails is reported with its error, the rest go on.

    `bundles`: what `prepare` returned (None: run it here, with the prompt length as given). With `profile_dir`,
    each onnxruntime backend then runs once more (1 warm-up + 1 query) with ONNX Runtime's profiler on; the
    per-operator summary is added to its result and the raw JSON files stay in `profile_dir`.
    """
    if bundles is None:
        settings, bundles = prepare(settings)
    specs = settings.specs
    started = _dt.datetime.now(_dt.timezone.utc)
    load_before = load_average()
    threads = settings.threads or machine_info()["cpu"]["usable_cpus"] or 1
    bandwidth = {"cpu": measure_cpu_bandwidth(threads, settings.bandwidth_mib)}
    if settings.device == "cuda":
        bandwidth["cuda"] = gpu_bandwidth()
    results = []
    for spec in specs:
        job = {"settings": settings.to_dict(), "backend": spec.name, "progress": progress,
               "bundle": bundles.get(spec.precision) if spec.family == "ort" else None}
        if progress:
            print(f"edge-vlm bench: measuring {spec.name} ...", file=sys.stderr, flush=True)
        result = _run_worker(job, worker_timeout_s)
        if profile_dir and spec.family == "ort" and result.get("status") == "ok":
            result["profile"] = _profile_pass(job, settings, profile_dir, worker_timeout_s, progress)
        _add_roofline(result, bandwidth)
        results.append(result)
    random_weights = (settings.random_weights or _artifacts_random(settings, bundles)
                      or any(r.get("random_weights") for r in results))
    if settings.preset and not random_weights:
        raise EdgeVLMError("internal: a preset run must be labelled random weights")
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "created": started.isoformat(timespec="seconds"),
        "command": command,
        "random_weights": random_weights,
        "label": RANDOM_WEIGHTS_LABEL if random_weights else "trained weights",
        "settings": settings.to_dict(),
        "machine": machine_info(),
        "versions": versions(),
        "load_average": {"before": load_before, "after": load_average()},
        "bandwidth": bandwidth,
        "backends": results,
    }
