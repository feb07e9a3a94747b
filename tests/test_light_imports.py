"""`import edge_vlm` and building the CLI parser stay free of torch, onnxruntime and cv2 (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "onnxruntime", "cv2", "transformers", "tensorrt", "rclpy", "onnx", "onnxruntime_genai"]


def _loaded_after(code: str) -> list[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_edge_vlm_is_light():
    assert _loaded_after("import edge_vlm, edge_vlm.imaging, edge_vlm.prompting, edge_vlm.tokenizer, edge_vlm.engine") == []


def test_cli_help_is_light():
    code = "from edge_vlm.cli.main import build_parser\nbuild_parser().format_help()"
    assert _loaded_after(code) == []
