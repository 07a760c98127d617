# Dense baseline: every region fine (force_scale='fine') = the plain DeiT-B; no gate loss.
_base_ = ['./msvit-b16-32_16xb64-20e_in1k.py']
# no gate parameters: the parameter-free content gate, which a forced scale never runs, so a
# dense checkpoint holds no gate weights (tools/test.py --content-gate decides with it)
model = dict(backbone=dict(force_scale='fine', gate=dict(_delete_=True, type='ContentGate')),
             gate_loss=None)
