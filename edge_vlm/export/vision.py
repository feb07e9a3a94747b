"""Vision tower + projector -> `vision.onnx`: pixel_values [B, 3, S, S] -> image_features [B, N, D], dynamic batch
(N: the patch tokens, or K of them under an image-token selection, edge_vlm.model.token_selection).

Exported with `torch.onnx.export(dynamo=True)`. A batch-1 example silently specialises the batch to 1 under dynamo
(docs/stack.md), so the example has batch 2 (distinct from every other dim) and the written graph's input dims are checked.
FP16 is made from the FP32 graph with ONNX Runtime's float16 converter, keeping float32 inputs and outputs so the
runtime feeds and reads the same arrays at every precision.

The export pipeline runs this in a subprocess (`export_vision_subprocess`): onnxscript's graph rewriter keeps the
last graph it matched in module-level rule objects, and with it the exported weights, which would keep the whole
checkpoint's memory map alive in the exporting process (measured: ~5 GB still resident at Phi-2 size after the model
was freed).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from edge_vlm.errors import EdgeVLMError

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_features"
EXAMPLE_BATCH = 2
MAX_BATCH = 64
OPSET = 20


class VisionFeatures(nn.Module):
    """The vision half of LLaVA alone (so the ONNX holds no LLM weights): the same computation as
    LlavaPhiForConditionalGeneration.image_features: hidden state `vision_feature_layer`, CLS dropped, the model's
    image-token selection if it has one (the graph then outputs K tokens), projector."""

    def __init__(self, model):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.feature_layer = model.config.vision_feature_layer
        self.selection = model.token_selection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from edge_vlm.model.token_selection import vision_features

        return self.projector(vision_features(self.vision_tower, pixel_values, self.feature_layer, self.selection))


def export_vision(model, target: Path, precision: str = "fp32") -> dict:
    """Write `target` (+ `target.data`) and return its I/O description. `precision`: 'fp32' or 'fp16'. The graph
    outputs `model.num_image_tokens` tokens per image (all patches, or the model's token selection)."""
    if precision not in ("fp32", "fp16"):
        raise EdgeVLMError(f"vision precision must be fp32 or fp16, got {precision!r}")
    target = Path(target)
    size = model.config.vision_config.image_size
    wrapper = VisionFeatures(model).eval()
    example = torch.randn(EXAMPLE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: batch}}, opset_version=OPSET, verbose=False,
        )
    if program is None:
        raise EdgeVLMError("torch.onnx.export returned no program for the vision part")
    _remove(target)
    if precision == "fp32":
        program.save(str(target), external_data=True)
    else:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = convert_float_to_float16(program.model_proto, keep_io_types=True)
        onnx.save_model(half, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + ".data", size_threshold=1024)
    io_shapes = check_vision_graph(target)
    return {"precision": precision, "opset": OPSET, **io_shapes}


def check_vision_graph(path: Path) -> dict:
    """The graph's input/output dims; fails unless the batch dim is symbolic (dynamic)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs, outputs = dims(graph.input[0]), dims(graph.output[0])
    if not isinstance(inputs[0], str) or not isinstance(outputs[0], str):
        raise EdgeVLMError(f"internal: the vision ONNX has a fixed batch ({inputs[0]}): the export specialised it")
    return {"inputs": {graph.input[0].name: inputs}, "outputs": {graph.output[0].name: outputs}}


def _remove(path: Path) -> None:
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress lines and warns about torchvision ops it cannot register; neither helps."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_vision_subprocess(checkpoint: Path, target: Path, precision: str, log_path: Path,
                             selection=None) -> dict:
    """export_vision in a fresh interpreter that loads `checkpoint` itself (and applies the image-token `selection`,
    an edge_vlm.image_tokens.TokenSelection or None); returns the same I/O description."""
    chosen = json.dumps(None if selection is None else selection.to_dict())
    command = [sys.executable, "-m", "edge_vlm.export.vision", str(checkpoint), str(target), precision, chosen]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            output, _ = process.communicate()
        except BaseException:  # Ctrl-C, SIGTERM or an error here: do not leave the exporter running
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
    if process.returncode != 0:
        tail = "".join(Path(log_path).read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise EdgeVLMError(f"the vision export failed (exit {process.returncode}); last lines of {log_path}:\n{tail}")
    return json.loads(output.strip().splitlines()[-1])


def _main(argv: list[str]) -> int:
    from edge_vlm.image_tokens import from_manifest
    from edge_vlm.model.checkpoint import load_checkpoint

    checkpoint, target, precision, chosen = argv
    model = load_checkpoint(checkpoint, dtype=torch.float32)[0]
    model.set_token_selection(from_manifest(json.loads(chosen), model.patch_tokens, "the vision export's selection"))
    info = export_vision(model, Path(target), precision)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
