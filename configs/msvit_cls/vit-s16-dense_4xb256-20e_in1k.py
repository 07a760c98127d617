# Dense baseline: every region fine (force_scale='fine') = the plain DeiT; no gate loss.
_base_ = ['./msvit-s16-32_4xb256-20e_in1k.py']
# no gate parameters: the parameter-free content gate, which a forced scale never runs, so a
# dense checkpoint holds no gate weights (tools/test.py --content-gate decides with it)
model = dict(backbone=dict(force_scale='fine', gate=dict(_delete_=True, type='ContentGate')),
             gate_loss=None)
