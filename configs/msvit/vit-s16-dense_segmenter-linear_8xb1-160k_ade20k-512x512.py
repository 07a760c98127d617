# Dense baseline: plain ViT-S/16 + Segmenter linear head (force_scale='fine'); no gate loss.
_base_ = ['./msvit-s16-32_segmenter-linear_8xb1-160k_ade20k-512x512.py']
model = dict(backbone=dict(force_scale='fine'), gate_loss=None)
