"""The runtime never imports torch or transformers: a fresh interpreter where importing either raises answers a
question with a bundle, and neither is in sys.modules afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import importlib.abc, json, sys
import numpy as np

class Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"the runtime imported {name}")
        return None

sys.meta_path.insert(0, Forbid())
from edge_vlm.engine import Chat, GenerationConfig
from edge_vlm.runtime import BundleEngine

engine = BundleEngine.from_bundle(sys.argv[1])
chat = Chat(engine, np.full((30, 30, 3), 200, np.uint8), GenerationConfig(max_new_tokens=6))
first = chat.ask("What is in the image?")
second = chat.ask("And now?")
sampled = "".join(engine.stream(None, "Hi", config=GenerationConfig(max_new_tokens=4, temperature=0.8, seed=0)))
print(json.dumps({"answers": [first, second, sampled],
                  "loaded": [m for m in ("torch", "transformers") if m in sys.modules]}))
"""


def test_bundle_answers_without_torch(fp32_bundle):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(fp32_bundle)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert all(isinstance(text, str) for text in result["answers"]) and result["answers"][0]
