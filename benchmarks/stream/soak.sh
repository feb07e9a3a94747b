#!/usr/bin/env bash
# Soak of the robot loop: FRAMES synthetic frames through `edge-vlm stream`, reporting resident memory over the run.
#
#   benchmarks/stream/soak.sh [MODEL_DIR] [FRAMES] [PLAYBACK]
#
# MODEL_DIR defaults to the built-in model (edge_vlm/assets/builtin); when that is absent a tiny RANDOM-weight
# checkpoint is written to a temp dir and used (the summary says random_weights: true).
# PLAYBACK lossless (default) answers every frame; realtime runs a 30 fps synthetic camera and drops what the
# model cannot keep up with, until FRAMES frames were captured... approximately (duration FRAMES/30 s).
# Output: the summary JSON (rss_mb_warm / rss_mb_end / rss_growth_mb / rss_series) in benchmarks/stream/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
MODEL=${1:-edge_vlm/assets/builtin}
FRAMES=${2:-5000}
PLAYBACK=${3:-lossless}
if [ ! -f "$MODEL/config.json" ]; then
  MODEL=$(mktemp -d)/tiny
  "$PYTHON" -c "from edge_vlm.model.factory import write_random_checkpoint as w; w('tiny', '$MODEL', seed=0)"
  echo "no built-in model: using a tiny RANDOM-weight checkpoint ($MODEL)" >&2
fi
LIMIT=(--max-frames "$FRAMES")
[ "$PLAYBACK" = realtime ] && LIMIT=(--duration "$(( FRAMES / 30 + 1 ))")
OUT=benchmarks/stream/results/soak_${PLAYBACK}_${FRAMES}.json
"$PYTHON" -m edge_vlm.cli.main stream --model "$MODEL" --source synthetic:30 --size 320x240 \
  --playback "$PLAYBACK" "${LIMIT[@]}" --prompt "What is moving?" --max-new-tokens 8 --threads 2 \
  --jsonl "$(mktemp -d)/answers.jsonl" --quiet | tail -n 1 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
"$PYTHON" -c "import json,sys; s=json.load(open('$OUT'))['summary']; print({k: s[k] for k in ('answers','frames_captured','elapsed_s','rss_mb_warm','rss_mb_end','rss_growth_mb','random_weights')})"
