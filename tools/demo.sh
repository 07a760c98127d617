#!/usr/bin/env bash
# `make demo`: the smallest end-to-end run that exists so far.
# For now: generate the synthetic ADE20K-layout dataset and load it through mmseg's ADE20KDataset.
# (The segmentation demo - train, evaluate, gate pictures - replaces this once it lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
DATA=data/synthetic_ade
$PYTHON tools/dataset_converters/make_synthetic.py $DATA --layout ade20k --num-train 64 --num-val 16 --img-size 256 256
$PYTHON - <<PY
import mmseg_msvit
from mmengine.registry import DefaultScope
from mmseg.datasets import ADE20KDataset
with DefaultScope.overwrite_default_scope('mmseg'):
    ds = ADE20KDataset(data_root='$DATA', data_prefix=dict(img_path='images/validation',
                       seg_map_path='annotations/validation'),
                       pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')])
print(f'[demo] mmseg ADE20KDataset reads {len(ds)} validation images from $DATA')
print('[demo] the segmentation demo (training MSViT-Ti) is not built yet')
PY
