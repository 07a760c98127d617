# Demo: MSViT-Ti/16-32 + a light UPerNet on the synthetic scenes (ADE20K layout), 128x128 crops,
# 400 iterations of batch 8 from scratch; trains on 2 CPU cores in minutes (`make demo`).
_base_ = [
    '../_base_/models/upernet_msvit-s.py', '../_base_/datasets/synthetic_ade.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k_adamw.py'
]
crop_size = (128, 128)
num_classes = 7
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='tiny', img_size=crop_size, drop_path_rate=0.0,
                  gate=dict(init_fine_fraction=0.9)),
    neck=dict(in_channels=[192] * 4, out_channels=96),
    # small objects are few pixels: online hard-pixel mining so 400 iterations learn them too
    decode_head=dict(in_channels=[96] * 4, channels=96, num_classes=num_classes,
                     dropout_ratio=0.0,
                     sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=20000)),
    auxiliary_head=dict(in_channels=96, channels=48, num_classes=num_classes,
                        dropout_ratio=0.0),
    # the gate starts (nearly) all fine, the target anneals 1.0 -> 0.5 over 200 iterations
    gate_loss=dict(grid_size=(4, 4), target=0.5, anneal_iters=200, loss_weight=1.0),
    # our option (not the paper's): each iteration, switch 2 random regions in 4 images, measure
    # the loss change and teach the gate which regions gain most from fine tokens; without it the
    # gate learns colour, not detail (README, Demo)
    gate_probe=dict(type='GateProbe', num_images=4, regions_per_image=2, loss_weight=1.0))
# AdamW as the full recipe (schedule_160k_adamw) with a from-scratch learning rate
optim_wrapper = dict(
    optimizer=dict(lr=0.0015),
    paramwise_cfg=dict(custom_keys={'gate_loss': dict(decay_mult=0., lr_mult=20.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=40),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=40, end=400, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=400, val_interval=400)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=200, max_keep_ckpts=2))
randomness = dict(seed=0)
