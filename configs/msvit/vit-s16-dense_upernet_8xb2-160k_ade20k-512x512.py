# Dense baseline: every region fine (force_scale='fine') = plain DeiT-S/16 + UPerNet; no gate loss.
_base_ = ['./msvit-s16-32_upernet_8xb2-160k_ade20k-512x512.py']
# no gate parameters: the parameter-free content gate, which a forced scale never runs, so a
# dense checkpoint holds no gate weights (tools/test.py --content-gate decides with it)
model = dict(backbone=dict(force_scale='fine', gate=dict(_delete_=True, type='ContentGate')),
             gate_loss=None)
