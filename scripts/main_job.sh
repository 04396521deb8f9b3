#!/usr/bin/env bash
# The main job on the embedded toy data set (CPU, no download): generate the data, train stage 1 (boxes),
# train stage 2 (mask head on frozen stage-1 weights), evaluate PQ/SQ/RQ, draw val predictions and the
# loss curves. Usage: scripts/main_job.sh [OUTPUT_DIR]   (default output/toy)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-output/toy}"
PY="${VENV:-.venv}/bin/python"
STAGE1=configs/toy/detr_R18_toy_stage1.yaml
STAGE2=configs/toy/detr_R18_toy_stage2.yaml
start=$(date +%s)

echo "== toy data set"
# the shape-only toy set: things in random colours (configs/toy: DATASETS.TOY.THING_COLORS "random")
"$PY" tools/generate_toy_dataset.py --root datasets/toy_panoptic_random --thing-colors random \
  --visualize 4
echo "== stage 1: boxes for things and stuff"
"$PY" tools/train_net.py --config-file "$STAGE1" OUTPUT_DIR "$OUT/stage1"
echo "== stage 2: mask head on the frozen stage-1 model, then PQ on toy_panoptic_val"
"$PY" tools/train_net.py --config-file "$STAGE2" OUTPUT_DIR "$OUT/stage2" \
  MODEL.DETR.FROZEN_WEIGHTS "$OUT/stage1/model_final.pth" 2>&1 | tee "$OUT/stage2.log"
echo "== pictures"
"$PY" tools/demo.py --config-file "$STAGE2" --dataset toy_panoptic_val --num 6 --output "$OUT/vis" --explain \
  MODEL.WEIGHTS "$OUT/stage2/model_final.pth"
"$PY" tools/plot_metrics.py "$OUT/stage1/metrics.json" "$OUT/stage2/metrics.json" -o "$OUT/loss_curve.png"
echo "== PQ on toy_panoptic_val"
sed -n '/Panoptic Evaluation Results/,/^$/p' "$OUT/stage2.log" | grep -E '^\||Panoptic' || true
echo "main job done in $(( $(date +%s) - start )) s; pictures in $OUT/vis, loss curves in $OUT/loss_curve.png"
