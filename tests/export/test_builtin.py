"""The built-in (trained) model through the export: the fp32 bundle's greedy tokens equal PyTorch's, and the INT8
and INT4 bundles pass their default gates. Skipped until edge_vlm/assets/builtin/ holds the model."""

from __future__ import annotations

from pathlib import Path

import pytest

BUILTIN = Path(__file__).resolve().parents[2] / "edge_vlm" / "assets" / "builtin"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BUILTIN / "config.json").is_file(),
                       reason="the built-in model is not in edge_vlm/assets/builtin/ yet"),
]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from edge_vlm.export.pipeline import ExportOptions, export_bundle

    base = tmp_path_factory.mktemp("builtin")
    bundles = {}
    for precision in ("fp32", "int8", "int4"):  # default thresholds: a failing gate raises GateFailed here
        bundles[precision] = export_bundle(ExportOptions(model=BUILTIN, out=base / precision, precision=precision),
                                           log=print)
    return bundles


def test_fp32_greedy_tokens_equal_pytorch(exports):
    from edge_vlm.data.synth import write_world
    from edge_vlm.engine import GenerationConfig, answer
    from edge_vlm.export.samples import load_samples
    from edge_vlm.model.engine import TorchEngine
    from edge_vlm.runtime import BundleEngine

    bundle, torch_engine = BundleEngine.from_bundle(exports["fp32"]), TorchEngine.from_checkpoint(BUILTIN)
    world = exports["fp32"].parent / "world"
    write_world(world, seed=7, train=1, eval_size=24, image_size=bundle.image_config.image_size, progress=False)
    config = GenerationConfig(max_new_tokens=16)
    for sample in load_samples(world / "eval.json"):
        expected = answer(torch_engine, torch_engine.prepare_image(sample.image), sample.question, config=config)
        assert answer(bundle, bundle.prepare_image(sample.image), sample.question, config=config) == expected


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_bundles_pass_the_gate(exports, precision):
    import json

    validation = json.loads((exports[precision] / "manifest.json").read_text())["validation"]
    assert validation["passed"] and not validation["degraded"], validation["failures"]
