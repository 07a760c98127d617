# Dense baseline: every region fine (force_scale='fine') = the plain DeiT; no gate loss.
_base_ = ['./msvit-ti16-32_4xb256-20e_in1k.py']
model = dict(backbone=dict(force_scale='fine'), gate_loss=None)
