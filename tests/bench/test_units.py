"""The small pieces: settings and backend names, scenarios, the exact-length prompt, percentiles, power parsing and
energy arithmetic, bandwidth figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_vlm.bench.bandwidth import nominal_bandwidth
from edge_vlm.bench.power import RaplMeter, mean_power_energy, parse_nvidia_smi, parse_tegrastats, rapl_domain
from edge_vlm.bench.settings import BenchSettings, load_scenario, parse_backend, parse_backends
from edge_vlm.bench.stats import decode_summary, percentile
from edge_vlm.bench.workload import prompt_ids, synthetic_image
from edge_vlm.errors import EdgeVLMError
from edge_vlm.prompting import PHI2_SYSTEM

REPO = Path(__file__).resolve().parents[2]


def test_backend_names_and_aliases():
    assert parse_backend("onnxruntime-int4").name == "ort-int4"
    assert parse_backend("PyTorch-BF16").name == "torch-bf16"
    assert parse_backend("ort-fp16+trt").tensorrt_vision
    assert parse_backend("torch-nf4").bitsandbytes
    assert [s.name for s in parse_backends(["torch-fp32,ort-int4", "ort-int4"])] == ["torch-fp32", "ort-int4"]
    for bad in ("torch-int4", "ort-nf4", "tensorflow-fp32", "torch-fp32+trt", ""):
        with pytest.raises(EdgeVLMError):
            parse_backends(bad)


def test_settings_validate_at_the_boundary():
    with pytest.raises(EdgeVLMError, match="random-weights"):
        BenchSettings(preset="llava-phi-2")
    with pytest.raises(EdgeVLMError, match="--bundle"):
        BenchSettings(backends=["ort-int4"], model="x")
    with pytest.raises(EdgeVLMError, match="--model"):
        BenchSettings(backends=["torch-fp32"])
    with pytest.raises(EdgeVLMError, match="new-tokens"):
        BenchSettings(model="x", new_tokens=0)
    with pytest.raises(EdgeVLMError, match="threads"):
        BenchSettings(model="x", threads=0)
    ok = BenchSettings(preset="llava-phi-2", random_weights=True, backends=["pytorch-fp32"])
    assert ok.backends == ["torch-fp32"]


@pytest.mark.parametrize("name", ["cpu", "a100", "jetson-orin"])
def test_every_scenario_loads(name):
    values = load_scenario(REPO / "benchmarks" / f"{name}.yaml")
    # a scenario names no artifact paths (they differ per machine): give one, and the settings must be valid
    values.setdefault("model", "CKPT")
    values.setdefault("bundles", ["B"])
    settings = BenchSettings(**values)
    assert settings.prompt_tokens == 600 and settings.new_tokens == 64


def test_scenario_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings:\n  promt_tokens: 3\n")
    with pytest.raises(EdgeVLMError, match="promt_tokens"):
        load_scenario(bad)
    with pytest.raises(EdgeVLMError, match="not found"):
        load_scenario(tmp_path / "missing.yaml")


def test_scenario_settings_at_the_top_level(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: mine\ndescription: two runs\nruns: 2\nbackends: ort-int4\n")
    assert load_scenario(scenario) == {"runs": 2, "backends": "ort-int4"}


def test_default_prompt_is_fitted_and_a_given_one_refused():
    from edge_vlm.bench.runner import fit_prompt

    settings = BenchSettings(bundles=["B"], backends=["ort-int4"], new_tokens=64)  # prompt_tokens: the default 600
    notes = []
    fitted = fit_prompt(settings, {"the bundle B": 512, "the checkpoint C": 2048}, None, notes.append)
    assert fitted.prompt_tokens == 512 - 64 and settings.prompt_tokens == 600
    assert len(notes) == 1 and "448-token prompt" in notes[0] and "512-token context of the bundle B" in notes[0]
    with pytest.raises(EdgeVLMError, match="--prompt-tokens 600 \\+ 64 new tokens exceed the 512-token context of "
                                           "the bundle B: use 448 or fewer"):
        fit_prompt(settings, {"the bundle B": 512}, "--prompt-tokens")
    assert fit_prompt(settings, {"the bundle B": 664}, "--prompt-tokens") is settings  # 600 + 64 fits exactly
    assert fit_prompt(settings, {}, None) is settings  # nothing known: the worker checks


@pytest.fixture
def fp32_bundle_manifest_dir(tmp_path):
    """A folder with only a bundle manifest (fp32 decoder): enough for what bench reads before any worker."""
    import json

    roles = {"vision": "vision.onnx", "decoder": "decoder/model.onnx", "embeddings": "embeddings.npy",
             "tokenizer": "tokenizer.json"}
    manifest = {
        "format": "edge-vlm-bundle", "schema_version": 1, "roles": roles,
        "files": {name: {"bytes": 1, "sha256": "0" * 64} for name in roles.values()},
        "precision": {"vision": "fp32", "decoder": "fp32", "embeddings": "float32"},
        "model": {"hidden_size": 8, "num_layers": 1, "head_size": 8, "vocab_size": 10, "context_length": 64,
                  "num_image_tokens": 4, "image_token_id": 9, "eos_token_id": 0},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_bench_without_backend_measures_what_was_given(fp32_bundle_manifest_dir):
    from edge_vlm.cli.bench import _default_backends

    assert _default_backends({"bundles": [str(fp32_bundle_manifest_dir)]}) == ["ort-fp32"]
    assert _default_backends({"model": "C", "bundles": [str(fp32_bundle_manifest_dir)]}) == ["torch-fp32", "ort-fp32"]
    assert _default_backends({}) == ["torch-fp32"]


def test_prompt_has_the_exact_length_and_the_template():
    from edge_vlm.model.factory import small_tokenizer

    tokenizer = small_tokenizer()
    for length in (59, 60, 77, 600):
        ids, description = prompt_ids(tokenizer, 16, length)
        assert len(ids) == length
        assert ids.count(tokenizer.image_token_id) == 16
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert text.startswith(PHI2_SYSTEM) and "USER:" in text and text.rstrip().endswith("ASSISTANT:")
        assert "without" not in description
    # 576 image tokens + the full template do not fit 600: the system sentence goes, the turn stays
    ids, description = prompt_ids(tokenizer, 576, 600)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) == 600 and ids.count(tokenizer.image_token_id) == 576
    assert "without its system sentence" in description
    assert text.startswith("USER:") and text.rstrip().endswith("ASSISTANT:")
    with pytest.raises(EdgeVLMError, match="at least"):
        prompt_ids(tokenizer, 576, 580)


def test_synthetic_image_is_deterministic():
    a, b = synthetic_image(), synthetic_image()
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_percentiles_by_hand():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    summary = decode_summary([[10.0, 10.0, 20.0, 40.0], [10.0, 10.0, 10.0, 10.0]])
    # run 1: 4 tokens in 80 ms = 50 tok/s; run 2: 4 in 40 ms = 100 tok/s; median of runs = 75
    assert summary["tokens_per_s"] == pytest.approx(75.0)
    assert summary["ms_per_token"]["p50"] == pytest.approx(10.0)
    assert summary["steps_per_run"] == 4


def test_power_parsers():
    assert parse_nvidia_smi("312.55, 40211\n") == (312.55, 40211.0)
    assert parse_nvidia_smi("[N/A], 1000") == (None, 1000.0)
    orin = ("11-27-2026 10:00:00 RAM 2915/7620MB (lfb 3x4MB) CPU [12%@1510,5%@1510] GR3D_FREQ 0% "
            "VDD_IN 4966mW/4966mW VDD_CPU_GPU_CV 1102mW/1102mW VDD_SOC 1413mW/1413mW")
    assert parse_tegrastats(orin) == (4.966, 2915.0)
    xavier = "RAM 3000/15692MB CPU [1%@1190] POM_5V_IN 3456/3456"  # older format: mW without the unit
    assert parse_tegrastats(xavier) == (3.456, 3000.0)
    assert parse_tegrastats("no power here") == (None, None)


def test_energy_from_power_samples_by_hand():
    samples = [(0.0, 100.0), (0.5, 200.0), (1.0, 300.0), (1.5, 400.0)]
    # inside [0.4, 1.2]: 200 W and 300 W -> 250 W x 0.8 s = 200 J
    assert mean_power_energy(samples, 0.4, 1.2) == pytest.approx(200.0)
    # a window between two samples uses the neighbours: (100 + 200) / 2 x 0.2 s
    assert mean_power_energy(samples, 0.1, 0.3) == pytest.approx(30.0)
    assert mean_power_energy([], 0.0, 1.0) is None


def test_rapl_counter_wraps(tmp_path):
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "max_energy_range_uj").write_text("1000000\n")
    (domain / "energy_uj").write_text("999000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain is not the package
    assert rapl_domain(tmp_path) == domain
    meter = RaplMeter(domain).start()
    mark = meter.begin()
    (domain / "energy_uj").write_text("4000\n")  # wrapped: 1000 + 4000 uJ later
    assert meter.end(mark)() == pytest.approx(0.005)


def test_nominal_bandwidth_table():
    assert nominal_bandwidth("NVIDIA A100-SXM4-80GB") == (2039.0, "A100-SXM4-80GB")
    assert nominal_bandwidth("NVIDIA A100-SXM4-40GB")[0] == 1555.0
    assert nominal_bandwidth("NVIDIA H100 80GB HBM3")[0] == 3350.0
    assert nominal_bandwidth("NVIDIA H100 PCIe")[0] == 2000.0
    assert nominal_bandwidth("NVIDIA H200")[0] == 4800.0
    assert nominal_bandwidth("NVIDIA Jetson AGX Orin Developer Kit")[0] == 204.8
    assert nominal_bandwidth("NVIDIA Jetson Orin Nano Developer Kit")[0] == 68.0
    assert nominal_bandwidth("Jetson Orin Nano 4GB")[0] == 34.0
    assert nominal_bandwidth("Radeon") is None
