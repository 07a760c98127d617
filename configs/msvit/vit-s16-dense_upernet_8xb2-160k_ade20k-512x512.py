# Dense baseline: every region fine (force_scale='fine') = plain DeiT-S/16 + UPerNet; no gate loss.
_base_ = ['./msvit-s16-32_upernet_8xb2-160k_ade20k-512x512.py']
model = dict(backbone=dict(force_scale='fine'), gate_loss=None)
