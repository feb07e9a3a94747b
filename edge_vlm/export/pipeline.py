"""`edge-vlm export`: checkpoint -> bundle, step by step, written atomically and checked against PyTorch.

Steps (each reported as "[k/n] ..."):
  1. load the checkpoint (fp32) and check the decoder's shape suits ONNX Runtime's attention op
  2. vision tower + projector -> vision.onnx (fp32 or fp16), in a subprocess (see edge_vlm.export.vision), with the
     image-token selection when K image tokens of N were asked for (edge_vlm.image_tokens)
  3. PyTorch reference answers and logits on the validation samples (while the model is loaded); with a token
     selection also PyTorch's answers with every image token, what the selection costs
  4. decoder -> PhiForCausalLM dir -> onnxruntime-genai builder (subprocess), embeddings.npy; the model is freed first
  5. weight quantization (INT8 / INT4, MatMulNBits), or the full-precision decoder as built
  6. the validation gate: the bundle vs the PyTorch reference; a failing bundle is refused (or flagged)
  7. (--tensorrt) the vision TensorRT engine, built here when TensorRT is importable
Memory: the PyTorch model is alive only in steps 1-4 and never together with the builder or an ONNX Runtime session
of the decoder, so the peak is the largest single step (export/README.md has the full-size figures).
"""

from __future__ import annotations

import gc
import shutil
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from edge_vlm.errors import EdgeVLMError
from edge_vlm.export.gate import GateFailed, Thresholds, default_thresholds, format_figures, judge
from edge_vlm.export.targets import get_target
from edge_vlm.fileio import atomic_dir, json_object, literal, owning
from edge_vlm.image_tokens import checkpoint_patch_tokens
from edge_vlm.image_tokens import choose as choose_tokens
from edge_vlm.image_tokens import summary as token_summary

QUANTIZED = ("int8", "int4")


@dataclass
class ExportOptions:
    model: Path
    out: Path
    precision: str | None = None  # None: the target's default
    target: str = "cpu"
    tensorrt: bool | None = None  # None: the target's default
    tensorrt_precision: str = "fp16"
    calibration: Path | None = None
    calibration_samples: int = 32
    quant_method: str | None = None  # None: gptq with --calibration, else rtn
    block_size: int | None = None  # None: the target's
    symmetric: bool | None = None  # None: the quantization method's default
    val: Path | None = None
    val_samples: int = 64  # one changed answer in 64 is a 1.6% drop; in 16 it is 6.25%, over the 5% limit alone
    val_max_new_tokens: int = 16
    thresholds: Thresholds | None = None  # None: the defaults for the precisions
    image_tokens: int | None = None  # K image tokens per image; None: the target's (every patch token by default)
    contextual_tokens: int | None = None  # of the K, merged from the dropped patches; None: the target's (0)
    max_token_accuracy_drop: float | None = None  # the gate's limit for a token selection; None: the thresholds'
    allow_degraded: bool = False
    force: bool = False
    providers: list[str] | None = None  # for the gate's run of the bundle (None: automatic)
    threads: int | None = None


def export_bundle(options: ExportOptions, log=print) -> Path:
    """Run the whole export; returns the bundle path. Raises EdgeVLMError (GateFailed when the gate refuses)."""
    started = time.perf_counter()
    # every check that needs no torch comes first: a wrong flag fails in a second, not after importing PyTorch
    target = get_target(options.target)
    precision = options.precision or target.default_precision
    if precision not in target.precisions:
        hint = " (fp16 needs a GPU target: --target cuda or jetson)" if precision == "fp16" else ""
        raise EdgeVLMError(f"precision {precision} is not offered for target {target.name} "
                           f"(choose {', '.join(target.precisions)}){hint}")
    if options.calibration is not None and precision not in QUANTIZED:
        raise EdgeVLMError("--calibration is for quantized decoders (--int4): it has nothing to calibrate at "
                           f"{precision}")
    if options.calibration is not None and not Path(options.calibration).is_file():
        raise EdgeVLMError(f"calibration data not found: {options.calibration}")
    if options.val is not None and not Path(options.val).is_file():
        raise EdgeVLMError(f"validation data not found: {options.val}")
    settings = _quant_settings(options, target, precision)
    use_tensorrt = target.tensorrt if options.tensorrt is None else options.tensorrt
    model_path, out = Path(options.model), Path(options.out)
    if not model_path.is_dir():
        raise EdgeVLMError(f"model directory not found: {model_path}" if not model_path.exists()
                           else f"model path is not a directory: {model_path}")
    drop = options.max_token_accuracy_drop
    if drop is not None and not (isinstance(drop, (int, float)) and 0 <= drop <= 1):
        raise EdgeVLMError(f"--max-token-accuracy-drop must be from 0 to 1 (a share of the answers), got {drop!r}")
    image_tokens, contextual, flag = _token_setting(options, target)
    patches = checkpoint_patch_tokens(model_path)
    if patches is not None:  # else loading the checkpoint reports what is wrong with its config
        choose_tokens(image_tokens, contextual, patches, flag)
    if out.resolve() == model_path.resolve():
        raise EdgeVLMError("--out must differ from --model: the export would replace the checkpoint")
    if model_path.resolve().is_relative_to(out.resolve()):
        raise EdgeVLMError(f"--out {out} holds the checkpoint {model_path}: the export would replace it; choose "
                           "another --out")

    from tqdm import tqdm

    from edge_vlm.model.checkpoint import check_checkpoint_dir
    from edge_vlm.runtime.bundle import check_contents, check_manifest

    model_dir = check_checkpoint_dir(model_path)
    progress = partial(tqdm, file=sys.stderr, leave=False, dynamic_ncols=True)
    step = _Steps(7 if use_tensorrt else 6, log)
    # entering refuses an existing --out (without --force; with it, anything but an earlier bundle holding nothing
    # else or an empty folder) and an output folder that cannot be written, before the checkpoint is loaded
    with atomic_dir(out, force=options.force, replaceable=_earlier_bundle, what="bundle") as tmp:
        work = tmp / "_work"
        work.mkdir()
        step("loading the checkpoint")
        model, tokenizer, meta, shape = _load(model_dir, log)
        image_size = model.config.vision_config.image_size
        patches = model.patch_tokens
        selection = choose_tokens(image_tokens, contextual, patches, flag)
        model.set_token_selection(selection)
        shape["num_image_tokens"] = model.num_image_tokens
        if selection is not None:
            log(f"  image tokens: {token_summary(model.num_image_tokens, model.patch_tokens, selection)}")

        step(f"exporting the vision tower + projector ({target.vision_precision}, "
             f"{model.num_image_tokens} image tokens)")
        from edge_vlm.export.vision import export_vision_subprocess

        vision_info = export_vision_subprocess(model_dir, tmp / "vision.onnx", target.vision_precision,
                                               work / "vision.log", selection)

        step("PyTorch reference on the validation samples")
        from edge_vlm.export.gate import torch_references
        from edge_vlm.export.samples import load_samples, synthetic_samples

        if options.val is not None:
            samples, val_name = load_samples(options.val, options.val_samples), str(options.val)
        else:
            samples = synthetic_samples(work, options.val_samples, image_size)
            val_name = f"synthetic world eval split ({options.val_samples} questions, seed 0)"
        references = torch_references(model, tokenizer, meta.image, samples, options.val_max_new_tokens, progress)
        all_token_answers = None
        if selection is not None:  # what the selection itself costs: PyTorch's answers with every image token
            model.set_token_selection(None)
            all_token_answers = [ref.answer_text for ref in torch_references(
                model, tokenizer, meta.image, samples, options.val_max_new_tokens, progress,
                desc="PyTorch, every image token")]
            model.set_token_selection(selection)

        step(f"building the decoder with onnxruntime-genai ({_base_precision(precision, target)}, "
             f"{target.execution_provider})")
        from edge_vlm.export import decoder as dec

        dec.write_phi_dir(model, model_dir, work / "phi")
        embeddings_dtype = "float32" if precision == "fp32" else "float16"
        dec.save_embeddings(model, tmp / "embeddings.npy", embeddings_dtype)
        lm_head_bias = model.lm_head.bias.detach().float().numpy().copy()
        _copy_processing_files(model_dir, tmp)
        del model
        _release_memory()
        built = dec.run_builder(work / "phi", work / "built", _base_precision(precision, target),
                                target.execution_provider, work / "builder.log")
        dec.check_lm_head_bias(built, lm_head_bias)
        shutil.rmtree(work / "phi", ignore_errors=True)
        built_bytes = _onnx_bytes(built)

        decoder_path = tmp / "decoder" / "model.onnx"
        if precision in QUANTIZED:
            step(f"quantizing the decoder to {precision} ({settings.method}, block {settings.block_size}, "
                 f"{'symmetric' if settings.symmetric else 'asymmetric'})")
            calibration = None
            if settings.method == "gptq":
                from edge_vlm.export.calibration import build_calibration

                calib_samples = load_samples(options.calibration, options.calibration_samples)
                calibration = build_calibration(tmp, built, calib_samples, shape, meta.image, progress)
            quant_summary = _quantize(built, decoder_path, settings, calibration, progress)
        else:
            step(f"keeping the decoder at {precision}")
            decoder_path.parent.mkdir()
            for name in ("model.onnx", "model.onnx.data"):
                shutil.move(str(built.parent / name), str(decoder_path.parent / name))
            quant_summary = None
        if (built.parent / "genai_config.json").is_file():  # onnxruntime-genai's description of the decoder's I/O
            shutil.copy2(built.parent / "genai_config.json", decoder_path.parent / "genai_config.json")
        decoder_bytes = _onnx_bytes(decoder_path)
        shutil.rmtree(work / "built", ignore_errors=True)

        manifest = _manifest_body(options, target, precision, settings if precision in QUANTIZED else None,
                                  quant_summary, meta, model_dir, shape, tokenizer, vision_info, embeddings_dtype,
                                  {"decoder_bytes": decoder_bytes, "decoder_built_bytes": built_bytes,
                                   "decoder_built_precision": _base_precision(precision, target)},
                                  {"patch_tokens": patches, "image_tokens": shape["num_image_tokens"],
                                   "token_selection": None if selection is None else selection.to_dict()})

        step("validation gate: the bundle vs PyTorch")
        result, gate_providers = _gate(tmp, manifest, samples, references, options, target, precision, progress,
                                       all_token_answers)
        log(format_figures(result))
        manifest["validation"] = {**result.to_dict(), "data": val_name, "degraded": not result.passed,
                                  "providers": gate_providers, "max_new_tokens": options.val_max_new_tokens}
        if not result.passed and not options.allow_degraded:
            tokens_only = all(failure.startswith("token_accuracy_drop") for failure in result.failures)
            remedy = ("more image tokens (--image-tokens), or accept the loss with --max-token-accuracy-drop X"
                      if tokens_only else "a higher precision (--int8 / --precision fp16), GPTQ calibration "
                      "(--calibration DATA)")
            raise GateFailed(
                f"the {precision} bundle{_tokens_label(selection, shape)} failed the validation gate and was not "
                f"written: {'; '.join(result.failures)}. Figures are above; try {remedy}, or --allow-degraded to "
                "write it flagged as degraded"
            )
        if not result.passed:
            log("  WARNING: writing a DEGRADED bundle (--allow-degraded); the manifest says so")

        if use_tensorrt:
            step(f"TensorRT engine for the vision part ({options.tensorrt_precision})")
            manifest["tensorrt"] = _tensorrt(tmp, options, samples, meta.image, log)

        shutil.rmtree(work, ignore_errors=True)  # atomic_dir gives what is left the modes mkdir/open would
        manifest["export_seconds"] = round(time.perf_counter() - started, 1)
        from edge_vlm.export.manifest import write_manifest

        write_manifest(tmp, manifest)
        check_manifest(tmp, manifest)  # what every reader checks: an export never writes a bundle `ask` refuses
        check_contents(tmp, manifest)
    log(f"bundle written to {out} ({_dir_bytes(out) / 1e6:.1f} MB, {time.perf_counter() - started:.0f} s)")
    return out


def _bundle_entries(folder: Path) -> list[str]:
    """Everything an export writes in a bundle: manifest.json and the files it lists (the export hashes every file
    it wrote into `files`; nothing else is added to a bundle later, TensorRT engines built at first load go to the
    user's cache)."""
    from edge_vlm.runtime.bundle import MANIFEST_FILE

    try:
        files = (json_object(folder / MANIFEST_FILE) or {}).get("files")
    except OSError:
        files = None
    names = [name for name in files if isinstance(name, str)] if isinstance(files, dict) else []
    return [MANIFEST_FILE, *map(literal, names)]


@owning(_bundle_entries)
def _earlier_bundle(folder: Path) -> bool:
    """An earlier bundle (manifest.json in our format): `--force` replaces it when it holds nothing else."""
    from edge_vlm.runtime.bundle import is_bundle_dir

    return is_bundle_dir(folder)


def _release_memory() -> None:
    """Free the PyTorch model before the builder loads its own copy: collect, then hand freed heap pages back to the
    system (glibc keeps freed blocks under its mmap threshold, ~32 MB, e.g. Phi-2's 26 MB attention matrices)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, ...): nothing to trim
            pass


class _Steps:
    def __init__(self, total: int, log):
        self.total, self.log, self.count = total, log, 0

    def __call__(self, text: str) -> None:
        self.count += 1
        self.log(f"[{self.count}/{self.total}] {text}")


def _load(model_dir: Path, log):
    import torch

    from edge_vlm.export.decoder import check_builder_compatible, decoder_shape
    from edge_vlm.model.checkpoint import load_checkpoint

    model, tokenizer, meta = load_checkpoint(model_dir, dtype=torch.float32)
    check_builder_compatible(model.config.text_config)
    if meta.random_weights:
        log(f"  note: {model_dir} has RANDOM weights ({meta.source}); the bundle's answers are meaningless")
    shape = decoder_shape(model.config.text_config)
    shape.update(num_image_tokens=model.num_image_tokens, image_token_id=tokenizer.image_token_id,
                 eos_token_id=tokenizer.eos_token_id)
    return model, tokenizer, meta, shape


def _quant_settings(options: ExportOptions, target, precision: str):
    from edge_vlm.export.quantize import QuantSettings

    method = options.quant_method or ("gptq" if options.calibration is not None else "rtn")
    if method == "gptq" and options.calibration is None:
        raise EdgeVLMError("GPTQ needs --calibration DATA (image + text samples in LLaVA JSON format)")
    bits = 8 if precision == "int8" else 4
    return QuantSettings(bits=bits, block_size=options.block_size or target.block_size, symmetric=options.symmetric,
                         method=method, accuracy_level=target.accuracy_level)


def _base_precision(precision: str, target) -> str:
    """What the builder builds before quantization: fp16 weights and I/O on GPUs, fp32 on CPUs."""
    if precision in ("fp32", "fp16"):
        return precision
    return "fp16" if target.gpu else "fp32"


def _quantize(source: Path, target_path: Path, settings, calibration, progress) -> dict:
    from edge_vlm.export.quantize import quantize_decoder

    return quantize_decoder(source, target_path, settings, calibration, progress)


def _copy_processing_files(model_dir: Path, bundle: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, bundle / name)


def _onnx_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.is_file())


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _tokens_label(selection, shape: dict) -> str:
    return "" if selection is None else f" with {shape['num_image_tokens']} image tokens"


def _token_setting(options: ExportOptions, target) -> tuple[int | None, int | None, str]:
    """(K, contextual, where K comes from) from the options, else from the target profile (None, 0: every patch
    token)."""
    if options.image_tokens is not None:
        return options.image_tokens, options.contextual_tokens, "--image-tokens"
    contextual = target.contextual_tokens if options.contextual_tokens is None else options.contextual_tokens
    flag = "--image-tokens" if target.image_tokens is None else f"target {target.name}'s image_tokens"
    return target.image_tokens, contextual, flag


def _manifest_body(options, target, precision, settings, quant_summary, meta, model_dir, shape, tokenizer,
                   vision_info, embeddings_dtype, sizes, vision) -> dict:
    from edge_vlm.export.manifest import checkpoint_hash, new_manifest, tool_versions

    quantization = None
    if settings is not None:
        quantization = {**settings.to_dict(), **(quant_summary or {})}
    return new_manifest(
        source={"checkpoint": str(Path(model_dir).resolve()), "checkpoint_sha256": checkpoint_hash(model_dir),
                "random_weights": meta.random_weights, "description": meta.source},
        target=target.to_dict(),
        precision={"vision": target.vision_precision, "decoder": precision, "embeddings": embeddings_dtype},
        quantization=quantization,
        model={**shape, "template": meta.template},
        vision=vision,  # image tokens: K of the tower's N patch tokens, and how they were chosen
        image=meta.image.to_dict(),
        roles={"vision": "vision.onnx", "decoder": "decoder/model.onnx", "embeddings": "embeddings.npy",
               "tokenizer": "tokenizer.json"},
        io={
            "vision": {"inputs": vision_info["inputs"], "outputs": vision_info["outputs"]},
            "decoder": {
                "inputs": {"inputs_embeds": ["batch", "sequence", shape["hidden_size"]],
                           "attention_mask": ["batch", "past + sequence"],
                           "past_key_values.{i}.key|value": ["batch", shape["num_kv_heads"], "past",
                                                             shape["head_size"]]},
                "outputs": {"logits": ["batch", 1, shape["vocab_size"]],
                            "present.{i}.key|value": ["batch", shape["num_kv_heads"], "past + sequence",
                                                      shape["head_size"]]},
            },
        },
        sizes=sizes,
        tools=tool_versions(),
        files={},
    )


def _gate(bundle_dir: Path, manifest: dict, samples, references, options, target, precision, progress,
          all_token_answers=None):
    from edge_vlm.export.gate import bundle_figures
    from edge_vlm.runtime.bundle import Bundle
    from edge_vlm.runtime.engine import BundleEngine

    engine = BundleEngine(Bundle(bundle_dir, manifest), providers=options.providers, threads=options.threads)
    figures = bundle_figures(engine, samples, references, options.val_max_new_tokens, progress, all_token_answers)
    thresholds = options.thresholds or default_thresholds(target.vision_precision, precision)
    if options.max_token_accuracy_drop is not None:
        thresholds = replace(thresholds, token_accuracy_drop_max=float(options.max_token_accuracy_drop))
    providers = engine.providers
    del engine
    gc.collect()
    return judge(figures, thresholds), providers


def _tensorrt(bundle_dir: Path, options, samples, image_config, log) -> dict:
    from edge_vlm.export.tensorrt import prepare_tensorrt

    return prepare_tensorrt(bundle_dir, options.tensorrt_precision, samples, image_config, log)
