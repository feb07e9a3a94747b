#!/usr/bin/env bash
# Item 6 of issue 6: answers/s, frame age at answer p50/p95 and drop rate of the latest-frame loop.
#
#   benchmarks/stream/measure.sh MODEL_OR_BUNDLE_DIR NAME [extra edge-vlm stream flags...]
#
# A directory with a manifest.json runs as --bundle (ONNX runtime, no torch), any other as --model (checkpoint).
# A 30 fps synthetic camera (320x240) for DURATION seconds (default 60), two prompts per frame, 16 new tokens,
# as fast as the model goes (no --max-hz), and again at --max-hz 1. Each run's summary JSON goes to
# benchmarks/stream/results/NAME_*.json; the last line of every `edge-vlm stream` run is that JSON.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
MODEL=$1; NAME=$2; shift 2
DURATION=${DURATION:-60}
KIND=--model
[ -f "$MODEL/manifest.json" ] && KIND=--bundle
run() {  # label, flags...
  local label=$1; shift
  "$PYTHON" -m edge_vlm.cli.main stream "$KIND" "$MODEL" --source synthetic:30 --size 320x240 \
    --prompt "What is moving?" --prompt "What color is the biggest object?" --max-new-tokens 16 \
    --duration "$DURATION" --quiet "$@" | tail -n 1 > "benchmarks/stream/results/${NAME}_${label}.json"
  "$PYTHON" - "benchmarks/stream/results/${NAME}_${label}.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
f = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"
print(f"{sys.argv[1]}: {f(s['answers_per_s'], 2)} answers/s, age p50 {f(s['frame_age_ms_p50'])} ms, "
      f"p95 {f(s['frame_age_ms_p95'])} ms, drop {f(100 * s['drop_rate'], 1)} %, prepare p50 "
      f"{f(s['prepare_ms_p50'])} ms, first token p50 {f(s['first_token_ms_p50'])} ms, random={s['random_weights']}")
PY
}
run flat "$@"
run 1hz --max-hz 1 "$@"
