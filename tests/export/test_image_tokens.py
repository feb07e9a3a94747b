"""Bundles with fewer image tokens: the vision graph selects exactly what the PyTorch model selects, the manifest
records the setting, the runtime splices K features, and --image-tokens N (every token) is today's bundle exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edge_vlm.image_tokens import TokenSelection
from tests.export.bundles import bundle

PROMPT = "What colour is the circle?"


@pytest.fixture(scope="module")
def reduced(export_base):
    """6 of the tiny model's 16 image tokens, 2 of them contextual (merged)."""
    return bundle(export_base, "fp32", image_tokens=6, contextual_tokens=2)


def _pixels(batch: int) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((batch, 3, 56, 56)).astype(np.float32)


def test_manifest_records_the_selection(reduced):
    manifest = json.loads((reduced / "manifest.json").read_text())
    assert manifest["vision"] == {"patch_tokens": 16, "image_tokens": 6,
                                  "token_selection": {"method": "cls-attention", "dominant": 4, "contextual": 2}}
    assert manifest["model"]["num_image_tokens"] == 6
    assert manifest["io"]["vision"]["outputs"]["image_features"][1:] == [6, 160]
    figures = manifest["validation"]["figures"]
    assert figures["accuracy_all_tokens"] is not None and "token_accuracy_drop" in figures
    assert manifest["validation"]["thresholds"]["token_accuracy_drop_max"] == 0.01


def test_vision_graph_selects_what_pytorch_selects(reduced, exportable_tiny):
    from edge_vlm.model.checkpoint import load_checkpoint
    from edge_vlm.runtime import BundleEngine

    engine = BundleEngine.from_bundle(reduced, providers=["cpu"])
    assert (engine.num_image_tokens, engine.patch_tokens, engine.token_selection) == (6, 16, TokenSelection(4, 2))
    model = load_checkpoint(exportable_tiny, dtype=torch.float32)[0]
    model.set_token_selection(TokenSelection(4, 2))
    pixels = _pixels(3)
    with torch.no_grad():
        expected = model.image_features(torch.from_numpy(pixels)).numpy()
    got = engine.image_features(pixels)
    assert got.shape == expected.shape == (3, 6, 160)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    model.set_token_selection(None)  # and they are not simply the first tokens of the full set
    with torch.no_grad():
        full = model.image_features(torch.from_numpy(pixels)).numpy()
    assert not np.allclose(got, full[:, :6], atol=1e-3)


def test_runtime_splices_k_features(reduced):
    from PIL import Image

    from edge_vlm.engine import GenerationConfig, answer
    from edge_vlm.runtime import BundleEngine

    engine = BundleEngine.from_bundle(reduced, providers=["cpu"])
    prepared = engine.prepare_image(Image.new("RGB", (80, 60), (20, 200, 40)))
    assert prepared.features.shape == (6, 160)
    assert prepared.prefix_ids.count(engine.tokenizer.image_token_id) == 6
    assert isinstance(answer(engine, prepared, PROMPT, config=GenerationConfig(max_new_tokens=4)), str)


def test_every_image_token_is_todays_bundle_exactly(export_base, fp32_bundle):
    """--image-tokens 16 of 16 writes the bundle the default export writes: same vision output and logits, bit
    for bit, and the manifest says every patch token."""
    from edge_vlm.runtime import BundleEngine

    explicit = bundle(export_base, "fp32", image_tokens=16, allow_degraded=False)
    assert json.loads((explicit / "manifest.json").read_text())["vision"] == {
        "patch_tokens": 16, "image_tokens": 16, "token_selection": None}
    today, full = BundleEngine.from_bundle(fp32_bundle), BundleEngine.from_bundle(explicit)
    assert full.token_selection is None and full.num_image_tokens == 16
    pixels = _pixels(2)
    features = today.image_features(pixels)
    assert np.array_equal(full.image_features(pixels), features)
    ids = today.tokenizer.encode_prompt(f"USER: <image>\n{PROMPT} ASSISTANT:", 16)
    expected, _ = today.prefill(ids, features[0])
    got, _ = full.prefill(ids, full.image_features(pixels)[0])
    assert np.array_equal(got, expected)


def test_a_lying_manifest_is_refused_on_open(reduced, tmp_path):
    """model.num_image_tokens and vision.image_tokens agree with each other but not with vision.onnx's output."""
    import shutil

    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.runtime import BundleEngine

    copy = shutil.copytree(reduced, tmp_path / "lying")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["num_image_tokens"] = manifest["vision"]["image_tokens"] = 7
    manifest["vision"]["token_selection"]["dominant"] = 5
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeVLMError, match=r"gives 7 image tokens of 160, but .*vision.onnx outputs batchx6x160"):
        BundleEngine.from_bundle(copy)


def test_gate_limits_what_the_selection_costs():
    from edge_vlm.export.gate import default_thresholds, judge

    figures = {"accuracy_bundle": 0.6, "accuracy_torch": 0.6, "accuracy_all_tokens": 0.7}
    thresholds = default_thresholds("fp32", "int4")
    result = judge(dict(figures), thresholds)
    assert result.failures == ["token_accuracy_drop 0.1 (needs <= 0.01: fewer image tokens cost more answers than "
                               "allowed; --max-token-accuracy-drop loosens it)"]
    assert abs(result.figures["token_accuracy_drop"] - 0.1) < 1e-12
    from dataclasses import replace

    assert judge(dict(figures), replace(thresholds, token_accuracy_drop_max=0.1)).passed
    assert judge({**figures, "accuracy_all_tokens": 0.605}, thresholds).passed  # within the point allowed
    unknown = {"accuracy_bundle": None, "accuracy_torch": None, "accuracy_all_tokens": None}
    assert "token_accuracy_drop unknown" in judge(dict(unknown), thresholds).failures[0]
    assert judge(dict(unknown), replace(thresholds, token_accuracy_drop_max=1.0)).passed
    assert judge({"accuracy_bundle": 0.6, "accuracy_torch": 0.6}, thresholds).passed  # no selection, no check


def test_bench_table_shows_the_setting():
    from edge_vlm.bench.artifacts import image_tokens_info
    from edge_vlm.bench.report import _footer_lines, table_rows

    def backend(name, info):
        return {"name": name, "status": "ok", "info": info, "energy": {"available": False, "reason": "none"}}

    report = {"backends": [backend("ort-int4", {"image_tokens": image_tokens_info(18, 36, TokenSelection(14, 4))}),
                           backend("ort-fp32", {"image_tokens": image_tokens_info(36, 36, None)}),
                           backend("old-report", {})]}
    header, rows = table_rows(report)
    assert rows[0] == ["image tokens", "18 of 36", "36", "-"]
    assert "ort-int4: image tokens 18 of 36 (REDUCED; cls-attention: 14 dominant + 4 contextual (merged)): answers " \
           "can differ from the full model's" in _footer_lines(report)
    assert not any(line.startswith("ort-fp32: image tokens") for line in _footer_lines(report))
    assert table_rows({"backends": [backend("old-report", {})]})[1][0][0] != "image tokens"  # older reports: no row


@pytest.mark.slow
def test_gate_refuses_a_costly_selection_unless_loosened(tmp_path):
    """The trained built-in model with 1 of its 36 image tokens loses answers: the default gate refuses the bundle
    (nothing written), --max-token-accuracy-drop 1 writes it with the loss recorded."""
    from pathlib import Path

    from edge_vlm.export.gate import GateFailed
    from edge_vlm.export.pipeline import ExportOptions, export_bundle

    builtin = Path(__file__).resolve().parents[2] / "edge_vlm" / "assets" / "builtin"
    options = dict(model=builtin, precision="fp32", image_tokens=1, val_samples=16, val_max_new_tokens=8)
    with pytest.raises(GateFailed, match=r"with 1 image tokens failed the validation gate .*token_accuracy_drop"):
        export_bundle(ExportOptions(out=tmp_path / "refused", **options), log=lambda _: None)
    assert not (tmp_path / "refused").exists()
    written = export_bundle(ExportOptions(out=tmp_path / "loosened", max_token_accuracy_drop=1.0, **options),
                            log=lambda _: None)
    validation = json.loads((written / "manifest.json").read_text())["validation"]
    assert validation["passed"] and validation["thresholds"]["token_accuracy_drop_max"] == 1.0
    assert validation["figures"]["token_accuracy_drop"] > 0.01


def test_gate_counts_pictures_whose_kept_tokens_differ(reduced, exportable_tiny, export_base):
    """A picture with a token that is not PyTorch's (here: the reference's last token pointing the other way; a
    near-tie broken the other way puts another patch there) leaves the vision figures and lowers
    selection_agreement, which has its own limit; the other pictures' figures stay exact."""
    from dataclasses import replace

    from edge_vlm.export.gate import bundle_figures, default_thresholds, judge, torch_references
    from edge_vlm.export.samples import synthetic_samples
    from edge_vlm.model.checkpoint import load_checkpoint
    from edge_vlm.runtime import BundleEngine

    model, tokenizer, meta = load_checkpoint(exportable_tiny, dtype=torch.float32)
    model.set_token_selection(TokenSelection(4, 2))
    samples = synthetic_samples(export_base / "selection-world", 3, 56)
    references = torch_references(model, tokenizer, meta.image, samples, 4)
    engine = BundleEngine.from_bundle(reduced)
    figures = bundle_figures(engine, samples, references, 4)
    assert figures["selection_agreement"] == 1.0 and figures["vision_cosine_min"] > 0.99999
    other = references[0].features.copy()
    other[-1] = -other[-1]
    references[0] = replace(references[0], features=other)
    figures = bundle_figures(engine, samples, references, 4)
    assert figures["selection_agreement"] == pytest.approx(2 / 3)
    assert figures["vision_cosine_min"] > 0.99999
    failures = judge(figures, default_thresholds("fp32", "fp32")).failures
    assert "selection_agreement 0.666667 (needs >= 0.95)" in failures
    assert default_thresholds("fp16", "fp16").selection_agreement_min == 0.8
