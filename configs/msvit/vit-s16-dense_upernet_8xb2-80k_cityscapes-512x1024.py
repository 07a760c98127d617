# Dense baseline for Cityscapes: plain DeiT-S/16 + UPerNet (force_scale='fine'); no gate loss.
_base_ = ['./msvit-s16-32_upernet_8xb2-80k_cityscapes-512x1024.py']
# no gate parameters: the parameter-free content gate, which a forced scale never runs, so a
# dense checkpoint holds no gate weights (tools/test.py --content-gate decides with it)
model = dict(backbone=dict(force_scale='fine', gate=dict(_delete_=True, type='ContentGate')),
             gate_loss=None)
