"""The harness end to end on a tiny random checkpoint: every stage, the schema, the outputs, the label, compare."""

from __future__ import annotations

import copy
import json

import pytest
from PIL import Image

from edge_vlm.bench.schema import validate
from tests.conftest import run_cli

STAGES = ("preprocess_ms", "vision_ms", "prefill_ms", "ttft_ms", "decode_ms", "e2e_ms")


def test_every_stage_and_metric_is_present(bench_run):
    report = bench_run["report"]
    validate(report)
    (backend,) = report["backends"]
    assert backend["status"] == "ok" and backend["name"] == "torch-fp32"
    for stage in STAGES:
        assert len(backend["stages"][stage]["runs"]) == 2
        assert backend["stages"][stage]["median"] > 0
    assert backend["decode"]["steps_per_run"] == 6 and len(backend["decode"]["samples_ms"]) == 2
    d = backend["decode"]["ms_per_token"]
    assert 0 < d["p50"] <= d["p90"] <= d["p99"]
    assert backend["load_s"] > 0 and backend["memory"]["peak_rss_bytes"] >= backend["memory"]["rss_after_load_bytes"]
    assert backend["info"]["artifacts"]["weights_bytes"] > 0
    assert backend["roofline"]["bound_tokens_per_s"] > 0 and backend["roofline"]["percent_of_bound"] > 0
    energy = backend["energy"]
    # whether a power meter exists depends on the machine: either its figures are there, or the reason it is not
    from edge_vlm.bench.power import select_meter

    meter, reason = select_meter("cpu")
    if meter is None:
        assert energy == {"available": False, "reason": reason}
    else:
        assert energy["available"] is False or (energy["joules_per_token"] > 0 and energy["mean_power_w"] > 0)
    assert report["bandwidth"]["cpu"]["used_gb_s"] > 0
    assert report["settings"]["threads"] == 2 and backend["info"]["threads"] == 2
    # the sum of the stages is the query (timers are consecutive)
    s = {k: backend["stages"][k]["runs"][0] for k in STAGES}
    assert s["e2e_ms"] == pytest.approx(s["preprocess_ms"] + s["vision_ms"] + s["prefill_ms"] + s["decode_ms"])


def test_last_stdout_line_is_the_compact_report(bench_run):
    lines = bench_run["proc"].stdout.strip().splitlines()
    closing = json.loads(lines[-1])
    validate(closing)
    assert "samples_ms" not in closing["backends"][0]["decode"]
    assert closing["backends"][0]["decode"]["tokens_per_s"] == bench_run["report"]["backends"][0]["decode"]["tokens_per_s"]
    assert "vision+projector (ms)" in bench_run["proc"].stdout  # the table came first


def test_random_weights_are_labelled_in_every_output(bench_run):
    report, files, stdout = bench_run["report"], bench_run["files"], bench_run["proc"].stdout
    assert report["random_weights"] is True and "RANDOM WEIGHTS" in report["label"]
    assert report["backends"][0]["random_weights"] is True
    assert stdout.splitlines()[0].startswith("*** RANDOM WEIGHTS")
    assert json.loads(stdout.strip().splitlines()[-1])["random_weights"] is True
    markdown = files["markdown"].read_text()
    assert markdown.startswith("# edge-vlm bench — RANDOM WEIGHTS")
    with Image.open(files["plot"]) as png:
        assert png.format == "PNG" and png.size[0] > 500
        assert "RANDOM WEIGHTS" in png.text["Title"]


def _scaled_copy(report: dict) -> dict:
    other = copy.deepcopy(report)
    backend = other["backends"][0]
    backend["decode"]["tokens_per_s"] *= 2
    backend["stages"]["vision_ms"]["median"] *= 4
    return other


def test_compare_prints_ratios(bench_run):
    a_path = bench_run["files"]["json"]
    b_path = bench_run["dir"] / "b.json"
    b_path.write_text(json.dumps(_scaled_copy(bench_run["report"])))
    proc = run_cli("bench", "compare", str(a_path), str(b_path))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = result["backends"]["torch-fp32"]
    assert rows["decode_tokens_per_s"]["ratio"] == pytest.approx(2.0) and rows["decode_tokens_per_s"]["better"]
    assert rows["vision_ms"]["ratio"] == pytest.approx(4.0) and not rows["vision_ms"]["better"]
    assert rows["prefill_ms"]["ratio"] == pytest.approx(1.0)
    assert "x2.000" in proc.stdout


def test_compare_refuses_bad_reports(bench_run, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**bench_run["report"], "schema_version": 99}))
    proc = run_cli("bench", "compare", str(bench_run["files"]["json"]), str(bad))
    assert proc.returncode == 2 and "schema version 99" in proc.stderr
    proc = run_cli("bench", "compare", str(bench_run["files"]["json"]), str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "missing.json" in proc.stderr


def test_bad_inputs_fail_with_one_line(tmp_path):
    proc = run_cli("bench", "--model", str(tmp_path / "nope"), "--quiet")
    assert proc.returncode == 2 and "no such checkpoint directory" in proc.stderr
    proc = run_cli("bench", "--preset", "llava-phi-2", "--backend", "torch-fp32")
    assert proc.returncode == 2 and "--random-weights" in proc.stderr


def test_render_redraws_a_recorded_report(bench_run, tmp_path):
    again = tmp_path / "again.md"
    proc = run_cli("bench", "render", str(bench_run["files"]["json"]), "--markdown", str(again))
    assert proc.returncode == 0, proc.stderr
    assert again.read_text() == bench_run["files"]["markdown"].read_text()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["random_weights"] is True
