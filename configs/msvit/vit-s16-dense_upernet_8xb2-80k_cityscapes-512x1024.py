# Dense baseline for Cityscapes: plain DeiT-S/16 + UPerNet (force_scale='fine'); no gate loss.
_base_ = ['./msvit-s16-32_upernet_8xb2-80k_cityscapes-512x1024.py']
model = dict(backbone=dict(force_scale='fine'), gate_loss=None)
