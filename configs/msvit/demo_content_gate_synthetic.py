# Training-free mixed-scale tokens: the demo model with the parameter-free ContentGate (a region
# is scored by the pixel energy its coarse token loses) and a fixed fine budget per image. Use it
# to evaluate a DENSE checkpoint as a mixed-scale model without training:
#   python tools/test.py configs/msvit/demo_content_gate_synthetic.py DENSE_CKPT \
#       --cfg-options model.backbone.fine_budget=0.25
_base_ = ['./msvit-ti16-32_upernet_1xb8-400_synthetic-128x128.py']
model = dict(
    backbone=dict(gate=dict(_delete_=True, type='ContentGate'), force_scale=None,
                  fine_budget=0.5),
    gate_loss=None,  # nothing to train in the gate
    gate_probe=None)
