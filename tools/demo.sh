#!/usr/bin/env bash
# `make demo`: the recommended recipe on the synthetic scenes, end to end, on a CPU.
#   1. synthetic scenes (ADE20K layout)
#   2. step 1: a dense ViT-Ti/16 + light UPerNet from scratch (configs/msvit/demo_dense_synthetic.py)
#   3. step 2: the recipe - that model fine-tuned on mixed-scale tokens in one stage, its own
#      dense pass the teacher (configs/msvit/demo_recipe_synthetic.py)
#   4. the same validation images through: the dense model, the dense model downscaled to 0.75x
#      (equal backbone GMACs) and 0.875x (about equal whole-model GMACs), the dense model with the
#      training-free content gate, the recipe - mIoU, backbone and whole-model GMACs
#      (tools/analysis_tools/compare_baselines.py)
#   5. gate pictures of the recipe on validation scenes and on an image file without a label
# Every long step prints its progress with an ETA.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
DATA=data/synthetic_ade
DENSE_CONFIG=configs/msvit/demo_dense_synthetic.py
RECIPE_CONFIG=configs/msvit/demo_recipe_synthetic.py
DENSE_WORK=work_dirs/demo_dense
RECIPE_WORK=work_dirs/demo_recipe
DENSE_CKPT=$DENSE_WORK/iter_600.pth
RECIPE_CKPT=$RECIPE_WORK/iter_300.pth
start=$(date +%s)
step_start=$start

elapsed() { echo "$(( $(date +%s) - step_start )) s (total $(( $(date +%s) - start )) s)"; }
# training progress: mmengine's iteration lines, shortened to iteration, ETA and loss
progress() {
  grep --line-buffered -E "Iter\(train\) \[|Error|error:" \
    | sed -u -E 's/.*Iter\(train\) \[ *([0-9]+)\/([0-9]+)\].*eta: ([0-9:]+).*  loss: ([0-9.]+).*/[demo]     iteration \1\/\2, loss \4, ETA \3/' || true
}

echo "[demo] 1/5 synthetic scenes (ADE20K layout) -> $DATA"
$PYTHON tools/dataset_converters/make_synthetic.py $DATA --layout ade20k \
    --num-train 256 --num-val 48 --img-size 256 256
$PYTHON tools/dataset_converters/make_synthetic.py data/demo_photos --layout ade20k \
    --style shifted --num-train 1 --num-val 2 --img-size 256 320 > /dev/null

echo "[demo] 2/5 step 1: dense ViT-Ti/16 + UPerNet from scratch, 600 iterations -> $DENSE_WORK (about 4 min on 2 cores)"
step_start=$(date +%s)
rm -rf "$DENSE_WORK"
$PYTHON tools/train.py $DENSE_CONFIG --work-dir $DENSE_WORK 2>&1 | progress
[ -f "$DENSE_CKPT" ] || { echo "[demo] step 1 did not produce $DENSE_CKPT; see $DENSE_WORK/*/*.log"; exit 1; }
echo "[demo]     done in $(elapsed)"

echo "[demo] 3/5 step 2: the recipe - fine-tuned on mixed-scale tokens in one stage from step 1, 300 iterations -> $RECIPE_WORK (about 4 min on 2 cores)"
step_start=$(date +%s)
rm -rf "$RECIPE_WORK"
$PYTHON tools/train.py $RECIPE_CONFIG --work-dir $RECIPE_WORK --cfg-options load_from=$DENSE_CKPT \
    2>&1 | progress
[ -f "$RECIPE_CKPT" ] || { echo "[demo] step 2 did not produce $RECIPE_CKPT; see $RECIPE_WORK/*/*.log"; exit 1; }
echo "[demo]     done in $(elapsed)"

echo "[demo] 4/5 the same 48 validation scenes: dense, downscaled, content gate, recipe (under 1 min)"
step_start=$(date +%s)
$PYTHON tools/analysis_tools/compare_baselines.py $RECIPE_CONFIG $RECIPE_CKPT \
    --dense $DENSE_CONFIG $DENSE_CKPT --budget 0.42 --scales 0.75 0.875 --out-dir $RECIPE_WORK/compare \
    2>&1 | grep -E "^\||^\[compare\]|Error|error:"
echo "[demo]     done in $(elapsed)"

echo "[demo] 5/5 gate pictures: validation scenes and image files without labels"
step_start=$(date +%s)
$PYTHON tools/analysis_tools/visualize_gates.py $RECIPE_CONFIG $RECIPE_CKPT --out-dir $RECIPE_WORK/gates \
    --num-images 4 2>&1 | grep -E "^\[gates\]|Error|error:"
$PYTHON tools/analysis_tools/visualize_gates.py $RECIPE_CONFIG $RECIPE_CKPT \
    --images data/demo_photos/images/validation --out-dir $RECIPE_WORK/gates_photos \
    2>&1 | grep -E "^\[gates\]|Error|error:"
echo "[demo]     done in $(elapsed)"

echo
echo "[demo] done in $(( $(date +%s) - start )) s"
echo "[demo]   step 1 (dense):   $DENSE_CKPT"
echo "[demo]   step 2 (recipe):  $RECIPE_CKPT"
echo "[demo]   comparison:       $RECIPE_WORK/compare/compare.{csv,json,png}"
echo "[demo]   gate pictures:    $RECIPE_WORK/gates/, $RECIPE_WORK/gates_photos/"
echo "[demo] the evidence with seeds and every baseline: python tools/analysis_tools/msvit_study.py (README, Results)"
