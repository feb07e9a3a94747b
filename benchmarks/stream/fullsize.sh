#!/usr/bin/env bash
# The latest-frame loop with FULL-SIZE llava-phi-2 shapes and RANDOM weights (timings only, never quality).
#
#   benchmarks/stream/fullsize.sh DEVICE DTYPE DURATION_S LABEL [MAX_NEW_TOKENS] [SCENARIOS]
#   e.g.  benchmarks/stream/fullsize.sh cpu bfloat16 240 cpu_bf16 8 flat1
#         benchmarks/stream/fullsize.sh cuda float16 30 h100_fp16 16 flat1,flat2,hz2
#
# The model is built in memory directly in DTYPE on DEVICE (no 12 GB checkpoint on disk; bf16 on CPU needs ~6.5 GB
# of RAM), answers with a fixed number of new tokens (EOS ignored, so random weights cannot end answers early),
# about a 30 fps synthetic camera of 640x480 frames. Scenarios: flat1 = one prompt as fast as possible, flat2 = two
# prompts per frame (sharing one prefill), hz2 = one prompt at --max-hz 2. One JSON summary per scenario goes to
# $OUT (default benchmarks/stream/results) as fullsize_LABEL_SCENARIO.json, and one line per scenario is printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-benchmarks/stream/results}
"$PYTHON" - "$1" "$2" "$3" "$4" "${5:-16}" "${6:-flat1,flat2,hz2}" "$OUT" <<'PY'
import json, os, platform, sys, time

import torch

from edge_vlm.engine import GenerationConfig
from edge_vlm.model.engine import TorchEngine
from edge_vlm.model.factory import random_model, small_tokenizer
from edge_vlm.stream import StreamRunner, open_source
from edge_vlm.stream.stats import RssMonitor

device, dtype, duration, label, new_tokens, scenarios, out = sys.argv[1:8]
dtype_t = getattr(torch, dtype)
torch.set_default_dtype(dtype_t)  # build the weights in DTYPE directly: no fp32 copy of 3 B parameters
built = time.monotonic()
with torch.device(device):
    model = random_model("llava-phi-2", small_tokenizer(), seed=0)
model.eval()
torch.set_default_dtype(torch.float32)
engine = TorchEngine(model, small_tokenizer())
build_s = time.monotonic() - built
params = sum(p.numel() for p in model.parameters())
hardware = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
print(f"built {params / 1e9:.2f} B parameters in {dtype} on {device} ({hardware}) in {build_s:.0f} s", flush=True)
config = GenerationConfig(max_new_tokens=int(new_tokens), stop_at_eos=False)
prompts = {"flat1": (["What is moving?"], None), "flat2": (["What is moving?", "What color is the biggest object?"], None),
           "hz2": (["What is moving?"], 2.0)}
for name in scenarios.split(","):
    questions, hz = prompts[name]
    memory = RssMonitor(warmup_answers=1, every=1)
    with open_source("synthetic:30", size=(640, 480)) as source:
        runner = StreamRunner(engine, source, questions, max_hz=hz, duration_s=float(duration), generation=config)
        for result in runner.results():
            memory.sample(runner.stats.answers)
    summary = runner.summary({"model": "llava-phi-2 shapes, RANDOM weights", "random_weights": True,
                              "parameters": params, "dtype": dtype, "device": device, "hardware": hardware,
                              "max_new_tokens": int(new_tokens), "prompts": len(questions), "max_hz": hz,
                              "frame_size": "640x480", "build_s": build_s, **memory.summary()})
    path = os.path.join(out, f"fullsize_{label}_{name}.json")
    with open(path, "w") as f:
        json.dump({"summary": summary}, f)
    g = lambda key, d=0: "-" if summary[key] is None else f"{summary[key]:.{d}f}"
    print(f"{label} {name}: {g('answers_per_s', 3)} answers/s, frame age p50 {g('frame_age_ms_p50')} ms p95 "
          f"{g('frame_age_ms_p95')} ms, drop {100 * summary['drop_rate']:.1f} %, prepare p50 {g('prepare_ms_p50')} ms, "
          f"first token p50 {g('first_token_ms_p50')} ms, {summary['answers']} answers in {summary['elapsed_s']:.0f} s",
          flush=True)
PY
