# All-coarse baseline: every region one 32x32 token (force_scale='coarse'); no gate loss, and no
# gate parameters (the parameter-free content gate, which a forced scale never runs).
_base_ = ['./msvit-s16-32_upernet_8xb2-160k_ade20k-512x512.py']
model = dict(backbone=dict(force_scale='coarse', gate=dict(_delete_=True, type='ContentGate')),
             gate_loss=None)
