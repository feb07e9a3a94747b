"""The validation gate: figures computed right (checked on transformations with known results), thresholds applied,
a failing bundle refused with its figures (nothing written) or written flagged with --allow-degraded."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edge_vlm.export.gate import GateFailed, Thresholds, bundle_figures, default_thresholds, judge, torch_references
from edge_vlm.export.samples import ExportSample


@pytest.fixture(scope="module")
def setup(fp32_bundle, exportable_tiny, export_base):
    import torch

    from edge_vlm.export.samples import synthetic_samples
    from edge_vlm.model.checkpoint import load_checkpoint
    from edge_vlm.runtime import BundleEngine

    model, tokenizer, meta = load_checkpoint(exportable_tiny, dtype=torch.float32)
    samples = synthetic_samples(export_base / "gate-world", 3, 56)
    references = torch_references(model, tokenizer, meta.image, samples, 6)
    return BundleEngine.from_bundle(fp32_bundle), samples, references


def test_fp32_bundle_figures_are_near_perfect(setup):
    engine, samples, references = setup
    figures = bundle_figures(engine, samples, references, 6)
    assert figures["samples"] == 3 and figures["positions"] == sum(len(r.answer_ids) for r in references)
    assert figures["vision_cosine_min"] > 0.99999 and figures["vision_rel_error"] < 1e-4
    assert figures["logit_cosine_mean"] > 0.9999 and figures["top1_agreement"] == 1.0
    assert figures["exact_match"] == 1.0
    assert judge(figures, default_thresholds("fp32", "fp32")).passed


def test_figures_on_known_transformations(setup):
    """Reference features doubled: cosine 1, max-abs error = max|f|, relative error 1/2. Reference logits negated:
    centred cosine -1. Reference answers replaced: exact match 0. Sample answers = the bundle's: accuracy 1."""
    engine, samples, references = setup
    doubled = [replace(r, features=2 * r.features, logits=-r.logits, answer_text=r.answer_text + " x")
               for r in references]
    answers = [engine.tokenizer.decode([t for t in r.answer_ids if t != engine.eos_token_id]) for r in references]
    graded = [replace(s, answer=a.upper() + ".") for s, a in zip(samples, answers)]  # normalisation ignores case, "."
    figures = bundle_figures(engine, graded, doubled, 6)
    assert figures["vision_cosine_min"] == pytest.approx(1.0, abs=1e-6)
    top = max(float(np.abs(r.features).max()) for r in references)
    assert figures["vision_max_abs_error"] == pytest.approx(top, rel=1e-4)
    assert figures["vision_rel_error"] == pytest.approx(0.5, rel=1e-4)
    assert figures["logit_cosine_mean"] == pytest.approx(-1.0, abs=1e-4)
    assert figures["exact_match"] == 0.0
    assert figures["accuracy_bundle"] == 1.0 and figures["graded_samples"] == 3


def test_judge_applies_each_threshold():
    thresholds = Thresholds(0.99, 0.01, 0.98, 0.9, 0.8, 0.02)
    good = {"vision_cosine_min": 0.995, "vision_rel_error": 0.005, "logit_cosine_mean": 0.99,
            "top1_agreement": 0.95, "exact_match": 0.9, "accuracy_bundle": 0.8, "accuracy_torch": 0.81}
    assert judge(dict(good), thresholds).passed
    for name, bad in [("vision_cosine_min", 0.98), ("vision_rel_error", 0.02), ("logit_cosine_mean", 0.97),
                      ("top1_agreement", 0.85), ("exact_match", 0.7), ("accuracy_bundle", 0.7)]:
        result = judge({**good, name: bad}, thresholds)
        assert not result.passed and len(result.failures) == 1
        assert result.failures[0].startswith("accuracy_drop" if name == "accuracy_bundle" else name)
    assert judge({**good, "vision_cosine_min": None, "vision_rel_error": None}, thresholds).passed  # text-only


def test_defaults_tighten_with_precision():
    loose, tight = default_thresholds("fp16", "int4"), default_thresholds("fp32", "fp32")
    for field in ("vision_cosine_min", "logit_cosine_min", "top1_agreement_min", "exact_match_min"):
        assert getattr(tight, field) > getattr(loose, field)


def test_failing_bundle_is_refused(exportable_tiny, tmp_path):
    from edge_vlm.export.pipeline import ExportOptions, export_bundle
    from tests.export.bundles import FAST, IMPOSSIBLE

    lines: list[str] = []
    options = ExportOptions(model=exportable_tiny, out=tmp_path / "b", precision="fp32", thresholds=IMPOSSIBLE, **FAST)
    with pytest.raises(GateFailed, match="fp32 bundle failed the validation gate and was not written: exact_match"):
        export_bundle(options, log=lines.append)
    assert "exact_match" in "\n".join(lines) and "gate: FAILED" in "\n".join(lines)  # the figures were printed
    assert list(tmp_path.iterdir()) == []  # no bundle, no temp folder


def test_degraded_bundle_is_flagged(int4_bundle):
    """The int4 fixture failed an impossible gate and was written with allow_degraded."""
    from edge_vlm.export.manifest import describe
    from tests.export.bundles import IMPOSSIBLE

    manifest = json.loads((int4_bundle / "manifest.json").read_text())
    validation = manifest["validation"]
    assert validation["degraded"] and not validation["passed"]
    assert validation["thresholds"] == IMPOSSIBLE.to_dict()
    assert validation["failures"][0].startswith("exact_match")
    assert "DEGRADED" in describe(int4_bundle)


def test_int4_bundle_records_its_gate(int4_bundle):
    manifest = json.loads((int4_bundle / "manifest.json").read_text())
    validation = manifest["validation"]
    assert validation["providers"]["decoder"] == ["CPUExecutionProvider"]
    assert set(validation["figures"]) >= {"logit_cosine_mean", "top1_agreement", "exact_match", "vision_cosine_min"}
    assert manifest["quantization"]["bits"] == 4 and manifest["quantization"]["lm_head_bits"] == 8
    assert manifest["precision"] == {"vision": "fp32", "decoder": "int4", "embeddings": "float16"}


def test_text_only_samples_are_checked_too(setup):
    engine, _, _ = setup
    import torch

    from edge_vlm.model.checkpoint import load_checkpoint

    model, tokenizer, meta = load_checkpoint(engine.bundle.manifest["source"]["checkpoint"], dtype=torch.float32)
    samples = [ExportSample("t", None, [("Say hello.", "hello")], "hello")]
    references = torch_references(model, tokenizer, meta.image, samples, 5)
    figures = bundle_figures(engine, samples, references, 5)
    assert figures["vision_cosine_min"] is None and figures["top1_agreement"] == 1.0
