"""The torch-free part of the data layer stays torch-free (the runtime and `edge-vlm data synth` rely on it)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "transformers", "matplotlib", "cv2", "onnxruntime"]


def test_readers_validation_and_synth_import_no_heavy_module():
    code = ("import sys, json\nimport edge_vlm.data, edge_vlm.data.formats, edge_vlm.data.validate, "
            "edge_vlm.data.synth, edge_vlm.cli.data\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
