# Dense baseline: plain ViT-S/16 + Segmenter linear head (force_scale='fine'); no gate loss.
_base_ = ['./msvit-s16-32_segmenter-linear_8xb1-160k_ade20k-512x512.py']
# no gate parameters: the parameter-free content gate, which a forced scale never runs, so a
# dense checkpoint holds no gate weights (tools/test.py --content-gate decides with it)
model = dict(backbone=dict(force_scale='fine', gate=dict(_delete_=True, type='ContentGate')),
             gate_loss=None)
