# Demo: MSViT-Ti/16-32 + a light UPerNet on the synthetic scenes (ADE20K layout), 128x128 crops,
# 400 iterations of batch 8 from scratch; trains on 2 CPU cores in minutes (`make demo`).
_base_ = [
    '../_base_/models/upernet_msvit-s.py', '../_base_/datasets/synthetic_ade.py',
    '../_base_/default_runtime.py'
]
crop_size = (128, 128)
num_classes = 7
class_weight = [1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]  # sky wall floor stripes pole ball box
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='tiny', img_size=crop_size, drop_path_rate=0.0,
                  gate=dict(init_fine_fraction=0.5)),
    neck=dict(in_channels=[192] * 4, out_channels=96),
    # small objects are rare pixels: weight them up so 400 iterations learn them too
    decode_head=dict(in_channels=[96] * 4, channels=96, num_classes=num_classes,
                     dropout_ratio=0.0,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0,
                                      class_weight=class_weight)),
    auxiliary_head=dict(in_channels=96, channels=48, num_classes=num_classes,
                        dropout_ratio=0.0,
                        loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4,
                                         class_weight=class_weight)),
    gate_loss=dict(grid_size=(4, 4), target=0.5, anneal_iters=0, loss_weight=0.5))
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0015, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'gate_loss': dict(decay_mult=0.),
            'backbone.gate': dict(lr_mult=5.0),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=40),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=40, end=400, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=400, val_interval=400)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
