"""`eval --compare` over a checkpoint and its exported fp32 bundle: the same greedy answers (slow: an export)."""

from __future__ import annotations

import json

import pytest

from edge_vlm.cli.main import main
from tests.eval import layouts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exportable_checkpoint(tmp_path_factory):
    """The tiny preset with head size 80 (ONNX Runtime's attention kernel needs a multiple of 16)."""
    from edge_vlm.model.checkpoint import CheckpointMeta, save_checkpoint
    from edge_vlm.model.factory import random_model, small_tokenizer

    tokenizer = small_tokenizer()
    model = random_model("tiny", tokenizer, seed=0, weight_std=0.05, vocab_size=len(tokenizer),
                         num_attention_heads=2, num_key_value_heads=2)
    directory = tmp_path_factory.mktemp("ckpt") / "tiny80"
    return save_checkpoint(model, tokenizer, directory, CheckpointMeta(random_weights=True, source="test"))


def test_checkpoint_and_fp32_bundle_answer_alike(cli, exportable_checkpoint, tmp_path, capsys):
    data = layouts.synth(tmp_path / "synth")
    bundle = tmp_path / "bundle-fp32"
    done = cli("export", "--model", str(exportable_checkpoint), "--out", str(bundle), "--precision", "fp32",
               "--allow-degraded", "--val", str(data / "eval.json"), "--val-samples", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "results"
    assert main(["eval", "--compare", str(exportable_checkpoint), str(bundle), "--benchmark", "synth",
                 "--data", str(data), "--out", str(out), "--max-new-tokens", "6", "--no-progress"]) == 0
    capsys.readouterr()

    def texts(label):
        return [json.loads(line)["text"] for line in (out / label / "synth" / "merge.jsonl").read_text().splitlines()]

    assert texts("tiny80") == texts("bundle-fp32")
    comparison = json.loads((out / "compare-synth.json").read_text())
    assert comparison["benchmarks"]["synth"]["bundle-fp32"]["delta"] == 0
