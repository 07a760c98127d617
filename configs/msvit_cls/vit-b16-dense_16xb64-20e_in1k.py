# Dense baseline: every region fine (force_scale='fine') = the plain DeiT-B; no gate loss.
_base_ = ['./msvit-b16-32_16xb64-20e_in1k.py']
model = dict(backbone=dict(force_scale='fine'), gate_loss=None)
